# The health app takes over ModelTest and ModelHealth from the registry (registry/migrations/0008), tables, rows and
# all: only Django's picture of them moves, and their content types (so admin permissions and log entries follow).

import django.db.models.deletion
from django.conf import settings
from django.db import migrations, models

MOVED = ("modeltest", "modelhealth")


def _content_types_move(apps, schema_editor, *, source: str, target: str) -> None:
    content_type = apps.get_model("contenttypes", "ContentType")
    for model in MOVED:
        if not content_type.objects.filter(app_label=target, model=model).exists():
            content_type.objects.filter(app_label=source, model=model).update(app_label=target)


def content_types_forward(apps, schema_editor) -> None:
    _content_types_move(apps, schema_editor, source="registry", target="health")


def content_types_backward(apps, schema_editor) -> None:
    _content_types_move(apps, schema_editor, source="health", target="registry")


class Migration(migrations.Migration):

    initial = True

    dependencies = [
        ("contenttypes", "0002_remove_content_type_name"),
        ("registry", "0008_health_models_moved"),
        migrations.swappable_dependency(settings.AUTH_USER_MODEL),
    ]

    operations = [
        migrations.SeparateDatabaseAndState(state_operations=[
            migrations.CreateModel(
                name="ModelTest",
                fields=[
                    ("id", models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name="ID")),
                    ("state", models.CharField(choices=[("queued", "Queued"), ("running", "Running"), ("succeeded", "Succeeded"), ("failed", "Failed")], default="queued", max_length=16)),
                    ("reachable", models.BooleanField(null=True)),
                    ("key_accepted", models.BooleanField(null=True)),
                    ("model_found", models.BooleanField(null=True)),
                    ("latency_ms", models.FloatField(null=True)),
                    ("capabilities", models.JSONField(blank=True, default=dict)),
                    ("error", models.CharField(blank=True, help_text="A generic message, never an upstream body.", max_length=300)),
                    ("created_at", models.DateTimeField(auto_now_add=True, db_index=True)),
                    ("started_at", models.DateTimeField(null=True)),
                    ("finished_at", models.DateTimeField(null=True)),
                    ("llm_model", models.ForeignKey(blank=True, null=True, on_delete=django.db.models.deletion.CASCADE, related_name="tests", to="registry.llmmodel")),
                    ("requested_by", models.ForeignKey(blank=True, null=True, on_delete=django.db.models.deletion.SET_NULL, related_name="+", to=settings.AUTH_USER_MODEL)),
                    ("user_model", models.ForeignKey(blank=True, null=True, on_delete=django.db.models.deletion.CASCADE, related_name="tests", to="registry.userllmconfig")),
                ],
                options={
                    "db_table": "registry_modeltest",
                    "ordering": ["-created_at"],
                    "indexes": [
                        models.Index(fields=["llm_model", "-created_at"], name="registry_mo_llm_mod_ce46fd_idx"),
                        models.Index(fields=["user_model", "-created_at"], name="registry_mo_user_mo_4a136e_idx"),
                    ],
                    "constraints": [
                        models.CheckConstraint(condition=models.Q(models.Q(("llm_model__isnull", False), ("user_model__isnull", True)), models.Q(("llm_model__isnull", True), ("user_model__isnull", False)), _connector="OR"), name="model_test_has_one_target"),
                    ],
                },
            ),
            migrations.CreateModel(
                name="ModelHealth",
                fields=[
                    ("id", models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name="ID")),
                    ("status", models.CharField(choices=[("healthy", "Healthy"), ("degraded", "Degraded"), ("down", "Down"), ("unknown", "Unknown")], default="unknown", max_length=16)),
                    ("last_checked_at", models.DateTimeField(null=True)),
                    ("last_latency_ms", models.FloatField(null=True)),
                    ("live_failures", models.PositiveIntegerField(default=0, help_text="Consecutive failed live requests.")),
                    ("last_live_failure_at", models.DateTimeField(null=True)),
                    ("last_live_success_at", models.DateTimeField(null=True)),
                    ("updated_at", models.DateTimeField(auto_now=True)),
                    ("llm_model", models.OneToOneField(blank=True, null=True, on_delete=django.db.models.deletion.CASCADE, related_name="health", to="registry.llmmodel")),
                    ("user_model", models.OneToOneField(blank=True, null=True, on_delete=django.db.models.deletion.CASCADE, related_name="health", to="registry.userllmconfig")),
                ],
                options={"db_table": "registry_modelhealth"},
            ),
        ]),
        migrations.RunPython(content_types_forward, content_types_backward),
    ]
