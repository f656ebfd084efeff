from django.apps import AppConfig


class App02Config(AppConfig):
    default_auto_field = "django.db.models.BigAutoField"
    name = "app02"
