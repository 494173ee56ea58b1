from django.apps import AppConfig


class HealthConfig(AppConfig):
    name = "health"
    verbose_name = "Model health"

    def ready(self) -> None:
        from health.status import model_status
        from registry.selectors import model_status_reader_install

        model_status_reader_install(model_status)
