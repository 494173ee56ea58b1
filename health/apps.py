from django.apps import AppConfig
from django.db.models.signals import post_save


def _breaker_reset_on_change(sender, instance, **kwargs) -> None:
    # A model whose configuration changed (its key fixed, say) starts with a closed breaker.
    from health.breakers import breaker_reset
    from health.status import model_key_of

    breaker_reset(model_key_of(instance))


class HealthConfig(AppConfig):
    name = "health"
    verbose_name = "Model health"

    def ready(self) -> None:
        from health.status import model_status
        from registry.models import LLMModel, UserLLMConfig
        from registry.selectors import model_status_reader_install

        model_status_reader_install(model_status)
        for model in (LLMModel, UserLLMConfig):
            post_save.connect(_breaker_reset_on_change, sender=model, dispatch_uid=f"health-breaker-{model.__name__}")
