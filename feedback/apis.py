"""POST /api/feedback/ (a vote on one of the caller's requests) and GET /api/feedback/?request_id= (its state).

Session or hub API key, like every /api endpoint; another user's request is as unknown as a missing one (404)."""

from drf_spectacular.utils import OpenApiParameter, extend_schema, extend_schema_field
from rest_framework import serializers
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from feedback.models import Feedback
from feedback.selectors import feedback_get
from feedback.services import feedback_submit
from llmhub.api import StrictSerializer, error_responses
from llmhub.errors import NotFound


@extend_schema_field({"type": "integer", "enum": [1, -1]})
class ScoreField(serializers.IntegerField):
    def to_internal_value(self, data):
        value = super().to_internal_value(data)
        if value not in (1, -1):
            raise serializers.ValidationError("Must be 1 (thumbs up) or -1 (thumbs down).")
        return value


class FeedbackInputSerializer(StrictSerializer):
    request_id = serializers.CharField(max_length=64, help_text="The request's id (`x-request-id`, `request_id`).")
    score = ScoreField(help_text="1: thumbs up; -1: thumbs down. A second vote replaces the first.")
    comment = serializers.CharField(required=False, allow_blank=True, max_length=500, default="")


class FeedbackOutputSerializer(serializers.Serializer):
    request_id = serializers.CharField()
    score = serializers.IntegerField(allow_null=True, help_text="null: no feedback on this request.")
    source = serializers.ChoiceField(choices=Feedback.Source.choices, allow_null=True,
                                     help_text="`implicit`: the same prompt was sent again soon after (a retry).")
    comment = serializers.CharField(allow_blank=True)
    model = serializers.CharField(allow_blank=True, help_text="The model(s) that answered, comma-separated.")
    task = serializers.CharField()
    updated_at = serializers.DateTimeField(allow_null=True)


# As FeedbackQuerySerializer takes it: DRF trims the value and refuses a blank one or a NUL character.
REQUEST_ID_SCHEMA = {"type": "string", "minLength": 1, "maxLength": 64, "pattern": r"[^\s\x1c-\x1f\x85\ufeff]",
                     "not": {"pattern": r"\x00"}}


def feedback_data(feedback: Feedback) -> dict:
    return {"request_id": feedback.request_id, "score": feedback.score, "source": feedback.source,
            "comment": feedback.comment, "model": feedback.model_id, "task": feedback.task,
            "updated_at": feedback.updated_at}


class FeedbackApi(APIView):
    """POST: thumbs up or down on one of your requests (idempotent: a second vote replaces the first). GET: the
    feedback a request of yours has."""

    serializer_class = FeedbackInputSerializer

    @extend_schema(request=FeedbackInputSerializer, operation_id="feedback_submit",
                   responses={200: FeedbackOutputSerializer, **error_responses(404)})
    def post(self, request: Request) -> Response:
        data = FeedbackInputSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        feedback = feedback_submit(user_id=request.user.pk, **data.validated_data)
        return Response(FeedbackOutputSerializer(feedback_data(feedback)).data)

    @extend_schema(operation_id="feedback_retrieve", responses={200: FeedbackOutputSerializer,
                                                                **error_responses(400, 404)},
                   parameters=[OpenApiParameter("request_id", REQUEST_ID_SCHEMA, required=True,
                                                description="The request's id.")])
    def get(self, request: Request) -> Response:
        query = FeedbackQuerySerializer(data=request.query_params)
        query.is_valid(raise_exception=True)
        request_id = query.validated_data["request_id"]
        found, feedback = feedback_get(user_id=request.user.pk, request_id=request_id)
        if found is None:
            raise NotFound("No request of yours has this id.", code="request_not_found")
        if feedback is None:
            data = {"request_id": request_id, "score": None, "source": None, "comment": "", "updated_at": None,
                    **found}
        else:
            data = feedback_data(feedback)
        return Response(FeedbackOutputSerializer(data).data)


class FeedbackQuerySerializer(serializers.Serializer):
    request_id = serializers.CharField(max_length=64)
