from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError

from registry.services import api_key_create


class Command(BaseCommand):
    help = "Create a hub API key for a user and print it once (only its hash is stored)."

    def add_arguments(self, parser) -> None:
        parser.add_argument("--user", required=True, help="username")
        parser.add_argument("--name", default="", help="a label for the key")

    def handle(self, *args, user: str, name: str, **options) -> None:
        owner = get_user_model().objects.filter(username=user).first()
        if owner is None:
            raise CommandError(f"No user named {user!r}.")
        _, raw_key = api_key_create(user=owner, name=name)
        self.stdout.write(raw_key)
