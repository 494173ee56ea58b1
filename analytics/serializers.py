from rest_framework import serializers

from analytics.selectors import DEFAULT_WINDOW, TASKS, WINDOWS
from registry.serializers import HealthOutputSerializer, ModelHeadSerializer


class AnalyticsQuerySerializer(serializers.Serializer):
    window = serializers.ChoiceField(choices=list(WINDOWS), default=DEFAULT_WINDOW,
                                     help_text="24h (by the hour), 7d or 30d (by the day, today included).")
    task = serializers.ChoiceField(choices=list(TASKS), required=False,
                                   help_text="Only requests of this task type (translation: /api/translate; "
                                             "generation: every other endpoint); absent: all.")


class PercentilesSerializer(serializers.Serializer):
    p50 = serializers.FloatField(allow_null=True)
    p95 = serializers.FloatField(allow_null=True)
    p99 = serializers.FloatField(allow_null=True)


class UptimeSerializer(serializers.Serializer):
    tests = serializers.IntegerField(help_text="Finished model tests in the window.")
    succeeded = serializers.IntegerField()
    rate = serializers.FloatField(allow_null=True, help_text="succeeded / tests; null without tests.")


class FiguresSerializer(serializers.Serializer):
    requests = serializers.IntegerField()
    succeeded = serializers.IntegerField(help_text='Requests with status "ok".')
    failed = serializers.IntegerField(help_text="Errors and streams cut midway.")
    success_rate = serializers.FloatField(allow_null=True, help_text="0-1; null without requests.")
    failures = serializers.DictField(child=serializers.IntegerField(),
                                     help_text="Failed requests per kind (the usage log's error_type).")
    latency_ms = PercentilesSerializer(help_text="Of successful requests, within 9.1% (log-scale histograms).")
    ttft_ms = PercentilesSerializer(help_text="Time to first token of successful streams.")
    output_tokens_per_second = serializers.FloatField(allow_null=True)
    input_tokens = serializers.IntegerField()
    output_tokens = serializers.IntegerField()
    cost = serializers.DecimalField(max_digits=24, decimal_places=10)
    cost_per_1k_requests = serializers.DecimalField(max_digits=30, decimal_places=10, allow_null=True)
    uptime = UptimeSerializer()


class AnalyticsModelHeadSerializer(ModelHeadSerializer):
    kind = serializers.CharField()


class ModelFiguresSerializer(AnalyticsModelHeadSerializer, FiguresSerializer):
    pass


class ProviderFiguresSerializer(FiguresSerializer):
    provider = serializers.CharField()
    provider_name = serializers.CharField()


class WindowSerializer(serializers.Serializer):
    window = serializers.ChoiceField(choices=list(WINDOWS))
    task = serializers.ChoiceField(choices=list(TASKS), allow_null=True)
    start = serializers.DateTimeField(help_text="The start of the window's first hour or day.")
    end = serializers.DateTimeField(help_text="Now: figures include the current hour.")


class AnalyticsModelsOutputSerializer(WindowSerializer):
    models = ModelFiguresSerializer(many=True, help_text="Models with traffic first, by requests.")
    providers = ProviderFiguresSerializer(many=True)


class PointSerializer(FiguresSerializer):
    start = serializers.DateTimeField()


class ByTaskSerializer(serializers.Serializer):
    generation = FiguresSerializer()
    translation = FiguresSerializer()


class AnalyticsModelOutputSerializer(WindowSerializer, FiguresSerializer):
    step = serializers.ChoiceField(choices=["hour", "day"])
    model = AnalyticsModelHeadSerializer()
    status = HealthOutputSerializer(help_text="The model's health and circuit breaker now (an open breaker says why "
                                              "and since when).")
    by_task = ByTaskSerializer(help_text="The whole window per task type (not filtered by `task`).")
    points = PointSerializer(many=True, help_text="Each hour or day of the window, oldest first.")


class RecommendationOutputSerializer(serializers.Serializer):
    id = serializers.IntegerField()
    period = serializers.DateField()
    task = serializers.CharField()
    tier = serializers.CharField()
    current_model = serializers.CharField()
    recommended_model = serializers.CharField()
    saving_percent = serializers.DecimalField(max_digits=5, decimal_places=1)
    message = serializers.CharField()
    evidence = serializers.JSONField()
    created_at = serializers.DateTimeField()
