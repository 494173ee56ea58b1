"""Staff see every signal in admin; the beat task runs the scan."""

from decimal import Decimal

from django.utils import timezone

from feedback.models import Feedback
from feedback.tasks import feedback_implicit_scan
from usage.models import UsageLog


def test_it_lists_signals_in_admin_and_the_beat_task_writes_retries(registry, make_user, client):
    user = make_user("admin-feedback-user", tier="free")
    staff = make_user("admin-feedback-staff", tier="free", is_staff=True, is_superuser=True)
    now = timezone.now()
    for number in range(2):
        UsageLog.objects.create(request_id=f"admin-{number}", user=user, endpoint="api.generate", tier="free",
                                answered_model="demo", status="ok", http_status=200, cost=Decimal(0), latency_ms=5,
                                prompt_hash="a" * 32, created_at=now.replace(microsecond=0) if number == 0 else now)

    assert feedback_implicit_scan.delay().get() == 1
    assert Feedback.objects.get().request_id == "admin-0"

    client.force_login(staff)
    page = client.get("/admin/feedback/feedback/")
    assert page.status_code == 200
    assert b"admin-0" in page.content
    assert client.get(f"/admin/feedback/feedback/{Feedback.objects.get().pk}/change/").status_code == 200
