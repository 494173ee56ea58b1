"""Output serializers of the health API."""

from rest_framework import serializers

from health.models import ModelTest


class ModelTestStartOutputSerializer(serializers.Serializer):
    test_id = serializers.IntegerField(source="pk")
    state = serializers.ChoiceField(choices=ModelTest.State.choices)


class ModelTestOutputSerializer(ModelTestStartOutputSerializer):
    reachable = serializers.BooleanField(allow_null=True)
    key_accepted = serializers.BooleanField(allow_null=True)
    model_found = serializers.BooleanField(allow_null=True)
    latency_ms = serializers.FloatField(allow_null=True)
    capabilities = serializers.DictField(child=serializers.BooleanField(allow_null=True),
                                         help_text="Detected features (chat, streaming, json_mode, tools): "
                                                   "true, false, or null when the check itself failed.")
    error = serializers.CharField(allow_blank=True)
    created_at = serializers.DateTimeField()
    started_at = serializers.DateTimeField(allow_null=True)
    finished_at = serializers.DateTimeField(allow_null=True)
