from django.apps import AppConfig


class InferenceConfig(AppConfig):
    name = "inference"
    verbose_name = "Inference"
    # The model is never loaded here: ready() also runs for migrate and for tests.
