from django.apps import AppConfig


class PromptsConfig(AppConfig):
    name = "prompts"
    verbose_name = "Prompt templates"

    def ready(self) -> None:
        from prompts import loader, signals

        signals.connect()
        loader.section_register()
