from django.apps import AppConfig


class RoutingConfig(AppConfig):
    name = "routing"
    verbose_name = "Routing"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from routing import loader, signals  # noqa: F401  (signals invalidate the policy snapshot on change)

        loader.section_register()
