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


class UsageOutputSerializer(serializers.Serializer):
    time_zone = serializers.CharField(help_text="Days and months are calendar periods in this time zone.")
    today = UsagePeriodSerializer()
    month = UsagePeriodSerializer()
    last_30_days = UsageDaySerializer(many=True, help_text="Oldest first; the last is today.")
    # QUOTAS: a placeholder for the remaining quota per limit (issue 8 item 2, usage/quotas.py, worktree `quotas`),
    # which replaces this field with its own serializer; until then always [].
    remaining_quota = serializers.ListField(child=serializers.DictField(), help_text="Remaining quota per limit.")
