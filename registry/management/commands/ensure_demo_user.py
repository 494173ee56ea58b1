import secrets

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand

from registry.services import api_key_create, user_tier_set


class Command(BaseCommand):
    help = "Create the local demo admin (top tier) once, printing its password and an API key."

    def add_arguments(self, parser) -> None:
        parser.add_argument("--username", default="demo")

    def handle(self, *args, username: str, **options) -> None:
        User = get_user_model()
        if User.objects.filter(username=username).exists():
            self.stdout.write(f"Demo admin '{username}' exists (reset with: manage.py changepassword {username}).")
            return
        password = secrets.token_urlsafe(12)
        user = User.objects.create_superuser(username=username, email="", password=password)
        from registry.models import Tier

        top = Tier.objects.order_by("-rank").first()
        if top is not None:
            user_tier_set(user=user, tier_slug=top.slug)
        _, raw_key = api_key_create(user=user, name="demo")
        self.stdout.write(
            f"Demo admin created: username '{username}', password '{password}'\n"
            f"Demo API key (shown once): {raw_key}"
        )
