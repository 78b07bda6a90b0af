from django.apps import AppConfig


class ConsoleConfig(AppConfig):
    name = "console"
    verbose_name = "Console"

    def ready(self) -> None:
        # Registers the system checks; nothing here may load a model or touch the network.
        from console import checks  # noqa: F401
