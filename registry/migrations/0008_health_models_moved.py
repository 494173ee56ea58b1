# ModelTest and ModelHealth now belong to the health app (health/migrations/0001_initial.py): the registry forgets
# them; their tables stay as they are.

from django.db import migrations


class Migration(migrations.Migration):

    dependencies = [
        ("registry", "0007_model_api"),
    ]

    operations = [
        migrations.SeparateDatabaseAndState(state_operations=[
            migrations.DeleteModel(name="ModelTest"),
            migrations.DeleteModel(name="ModelHealth"),
        ]),
    ]
