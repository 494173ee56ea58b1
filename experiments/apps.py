from django.apps import AppConfig


class ExperimentsConfig(AppConfig):
    name = "experiments"
    verbose_name = "Experiments"

    def ready(self) -> None:
        from experiments import signals
        from experiments.services import arm_template_resolve
        from prompts.services import prompt_resolver_register

        signals.connect()
        prompt_resolver_register(arm_template_resolve)
