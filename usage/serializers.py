from rest_framework import serializers


class UsageTotalsSerializer(serializers.Serializer):
    requests = serializers.IntegerField()
    errors = serializers.IntegerField(help_text='Requests with status "error".')
    input_tokens = serializers.IntegerField()
    output_tokens = serializers.IntegerField()
    cost = serializers.DecimalField(max_digits=24, decimal_places=10)


class UsagePeriodSerializer(UsageTotalsSerializer):
    start = serializers.DateTimeField()


class UsageDaySerializer(UsageTotalsSerializer):
    date = serializers.DateField()


class QuotaRemainingSerializer(serializers.Serializer):
    metric = serializers.ChoiceField(choices=["requests", "tokens", "cost"])
    period = serializers.ChoiceField(choices=["minute", "hour", "day", "month"])
    model = serializers.CharField(allow_null=True, help_text="The model the limit is scoped to; null: every model.")
    scope = serializers.ChoiceField(choices=["user", "key"], help_text="The user's limit or the API key's own.")
    # Cost amounts are decimal strings (currency), requests and tokens integers.
    limit = serializers.JSONField()
    used = serializers.JSONField(help_text="Settled plus reserved by requests in flight.")
    remaining = serializers.JSONField()
    resets_at = serializers.DateTimeField()


class UsageOutputSerializer(serializers.Serializer):
    time_zone = serializers.CharField(help_text="Days and months are calendar periods in this time zone.")
    today = UsagePeriodSerializer()
    month = UsagePeriodSerializer()
    last_30_days = UsageDaySerializer(many=True, help_text="Oldest first; the last is today.")
    remaining_quota = QuotaRemainingSerializer(many=True, help_text="Each limit of the caller (its tier's, its own, "
                                               "the API key's) this period; empty when none applies.")
