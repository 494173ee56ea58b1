"""One quota hold row per request (all its counters' amounts) instead of one per counter: a decision inserts one
row and a settle deletes one. Reservations in flight while this runs are carried over, so no counter keeps an
amount held that nothing would give back."""

from django.db import migrations, models


def _one_row_per_request(apps, schema_editor):
    old, new = apps.get_model("usage", "QuotaHoldPerCounter"), apps.get_model("usage", "QuotaHold")
    requests: dict[str, tuple[list[str], int]] = {}
    for hold in old.objects.order_by("request_id", "key"):
        amounts, expires_at = requests.setdefault(hold.request_id, ([], int(hold.expires_at.timestamp() * 1000)))
        amounts += (hold.key, str(hold.amount))
        requests[hold.request_id] = (amounts, min(expires_at, int(hold.expires_at.timestamp() * 1000)))
    new.objects.bulk_create([new(request_id=request_id, amounts=" ".join(amounts), expires_at=expires_at)
                             for request_id, (amounts, expires_at) in requests.items()], batch_size=500)


def _one_row_per_counter(apps, schema_editor):
    from datetime import UTC, datetime

    old, new = apps.get_model("usage", "QuotaHoldPerCounter"), apps.get_model("usage", "QuotaHold")
    rows = []
    for hold in new.objects.all():
        fields = hold.amounts.split(" ")
        expires_at = datetime.fromtimestamp(hold.expires_at / 1000, UTC)
        rows += [old(request_id=hold.request_id, key=key, amount=int(amount), expires_at=expires_at)
                 for key, amount in zip(fields[::2], fields[1::2], strict=True)]
    old.objects.bulk_create(rows, batch_size=500)


class Migration(migrations.Migration):

    dependencies = [
        ('usage', '0005_usage_pages'),
    ]

    operations = [
        migrations.RenameModel('QuotaHold', 'QuotaHoldPerCounter'),
        migrations.CreateModel(
            name='QuotaHold',
            fields=[
                ('request_id', models.CharField(max_length=64, primary_key=True, serialize=False)),
                ('amounts', models.TextField()),
                ('expires_at', models.BigIntegerField(db_index=True)),
            ],
        ),
        migrations.RunPython(_one_row_per_request, _one_row_per_counter),
        migrations.DeleteModel('QuotaHoldPerCounter'),
    ]
