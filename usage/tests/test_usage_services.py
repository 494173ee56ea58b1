import json
from datetime import timedelta
from decimal import Decimal

import pytest
from django.db import OperationalError, connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from usage import writer as writer_module
from usage.models import UsageLog
from usage.selectors import usage_totals
from usage.services import (
    tokens_count_messages,
    tokens_count_text,
    tokens_encoding,
    usage_cost,
    usage_flush,
    usage_record,
)
from usage.writer import writer


def test_it_computes_the_cost_exactly() -> None:
    cost = usage_cost(input_tokens=1234, output_tokens=567, input_price_per_million=Decimal("2.5"),
                      output_price_per_million=Decimal("10"))

    assert cost == Decimal("0.008755")
    assert cost.as_tuple().exponent == -10


def test_it_keeps_every_digit_of_large_costs_and_rounds_once_to_ten_places() -> None:
    large = usage_cost(input_tokens=3_000_000_000, output_tokens=1_000_000_000,
                       input_price_per_million=Decimal("123456.123456"), output_price_per_million=Decimal("0.000001"))
    tiny = usage_cost(input_tokens=3, output_tokens=0, input_price_per_million=Decimal("0.000035"),
                      output_price_per_million=Decimal("0"))

    assert large == Decimal("370368370.369") == Decimal(3000) * Decimal("123456.123456") + Decimal("0.001")
    assert tiny == Decimal("0.0000000001")  # 1.05e-10, half up
    assert usage_cost(input_tokens=0, output_tokens=0, input_price_per_million=Decimal("5"),
                      output_price_per_million=Decimal("5")) == 0


def test_it_counts_tokens_with_tiktoken_o200k_base_offline() -> None:
    encoding = tokens_encoding()

    assert encoding.name == "o200k_base"
    assert encoding.encode_ordinary("hello world") == [24912, 2375]
    assert tokens_count_text("hello world") == 2
    assert tokens_count_text("") == 0
    # A special-token marker in user text is text, never an error.
    assert tokens_count_text("<|endoftext|>") > 1


@pytest.mark.filterwarnings("ignore::DeprecationWarning:bpe_openai")
def test_it_counts_like_an_independent_o200k_base_implementation() -> None:
    import bpe_openai

    reference = bpe_openai.get_encoding("o200k_base")
    for text in ("Übersetze «Привет, мир» — 你好世界 😀 1234567 don't", "def f(x):\n    return x**2\n\n\n", "  a\tb  "):
        assert tokens_count_text(text) == len(reference.encode(text)) > 0


def test_it_counts_chat_messages_with_openais_per_message_overhead() -> None:
    messages = [
        {"role": "system", "content": "You are helpful."},
        {"role": "user", "content": "Hi", "name": "bob"},
    ]
    texts = ["system", "You are helpful.", "user", "Hi", "bob"]

    count = tokens_count_messages(messages)

    assert count == sum(map(tokens_count_text, texts)) + 3 * 2 + 1 + 3 == 18
    assert tokens_count_messages(messages) == count


def test_it_counts_content_parts_and_tool_calls() -> None:
    parts = [{"type": "text", "text": "Describe"}, {"type": "image_url", "image_url": {"url": "https://x.test/a.png"}},
             {"type": "text", "text": " this picture"}]
    tool_call = [{"id": "call_1", "type": "function", "function": {"name": "lookup", "arguments": "{\"q\":\"x\"}"}}]

    with_parts = tokens_count_messages([{"role": "user", "content": parts}])
    with_tools = tokens_count_messages([{"role": "assistant", "content": None, "tool_calls": tool_call}])

    assert with_parts == 3 + 3 + tokens_count_text("user") + tokens_count_text("Describe") + tokens_count_text(" this picture")
    assert with_tools == 3 + 3 + tokens_count_text("assistant") + tokens_count_text(json.dumps(tool_call, separators=(",", ":")))


@pytest.mark.django_db
def test_it_records_without_a_query(writer_paused, make_entry) -> None:
    with CaptureQueriesContext(connection) as queries:
        for _ in range(50):
            usage_record(make_entry())

    assert len(queries) == 0
    assert writer.pending == 50
    assert UsageLog.objects.count() == 0


@pytest.mark.django_db
def test_it_writes_every_field(writer_paused, make_user, make_entry) -> None:
    user = make_user(tier=None)
    entry = make_entry(user_id=user.pk, requested_model="gpt-5", answered_model="gpt-5-mini", input_tokens=100,
                       output_tokens=7, tokens_estimated=True, cost=Decimal("0.0000123456"), latency_ms=812.5,
                       ttft_ms=101.25, status="partial", http_status=200, error_type="upstream_disconnected",
                       attempts=2, streamed=True)
    usage_record(entry)

    assert usage_flush() == 1

    row = UsageLog.objects.get(request_id=entry.request_id)
    assert (row.user, row.endpoint, row.requested_model, row.answered_model) == (user, "v1.chat_completions", "gpt-5",
                                                                                 "gpt-5-mini")
    assert (row.input_tokens, row.output_tokens, row.tokens_estimated, row.cost) == (100, 7, True, Decimal("0.0000123456"))
    assert (row.latency_ms, row.ttft_ms, row.status, row.error_type, row.attempts, row.streamed) == (
        812.5, 101.25, "partial", "upstream_disconnected", 2, True)
    assert row.created_at == entry.created_at


@pytest.mark.django_db
def test_it_writes_one_row_per_request_id(writer_paused, make_entry) -> None:
    first = make_entry(request_id="dup-1", output_tokens=5)
    usage_record(first)
    usage_record(make_entry(request_id="dup-1", output_tokens=99))  # the same request, recorded twice
    usage_flush()
    usage_record(first)  # a flush retried after the database already had the batch
    usage_flush()

    assert list(UsageLog.objects.filter(request_id="dup-1").values_list("output_tokens", flat=True)) == [5]
    assert writer.pending == 0


@pytest.mark.django_db
def test_it_writes_a_thousand_records_in_a_few_inserts(writer_paused, make_entry) -> None:
    for _ in range(1000):
        usage_record(make_entry())

    with CaptureQueriesContext(connection) as queries:
        written = usage_flush()

    inserts = [query for query in queries if query["sql"].startswith("INSERT")]
    # Two batches of USAGE_BATCH_SIZE (500). PostgreSQL takes a batch in one statement; Django 5.2 caps a
    # SQLite statement at 999 parameters (52 rows of 19 columns), still one transaction per batch.
    assert len(inserts) <= (2 if connection.vendor == "postgresql" else 20)
    assert written == 1000 == UsageLog.objects.count()


@pytest.mark.django_db
def test_it_raises_a_database_error_from_usage_flush_and_keeps_the_rows(writer_paused, make_entry, monkeypatch) -> None:
    def database_down(entries) -> None:
        raise OperationalError("connection refused")

    for _ in range(3):
        usage_record(make_entry())
    monkeypatch.setattr(writer_module, "rows_insert", database_down)

    with pytest.raises(OperationalError):
        usage_flush()

    assert writer.pending == 3
    assert UsageLog.objects.count() == 0
    monkeypatch.undo()
    assert usage_flush() == 3
    assert UsageLog.objects.count() == 3


@pytest.mark.django_db(transaction=True)
def test_it_keeps_the_row_of_a_user_deleted_before_the_flush(writer_paused, make_user, make_entry) -> None:
    gone, staying = make_user("gone", tier=None), make_user("staying", tier=None)
    entries = [make_entry(user_id=gone.pk), make_entry(user_id=staying.pk, error_type="x" * 500)]
    gone.delete()
    for entry in entries:
        usage_record(entry)

    assert usage_flush() == 2

    rows = {row.request_id: row for row in UsageLog.objects.all()}
    assert rows[entries[0].request_id].user_id is None
    assert rows[entries[1].request_id].user_id == staying.pk
    assert rows[entries[1].request_id].error_type == "x" * 100


@pytest.mark.django_db
def test_it_totals_a_users_usage(writer_paused, make_user, make_entry) -> None:
    alice, bob = make_user("alice", tier=None), make_user("bob", tier=None)
    long_ago = timezone.now() - timedelta(days=40)
    for entry in (
        make_entry(user_id=alice.pk, input_tokens=10, output_tokens=1, cost=Decimal("0.0000000001")),
        make_entry(user_id=alice.pk, input_tokens=20, output_tokens=2, cost=Decimal("0.25")),
        make_entry(user_id=alice.pk, input_tokens=300, output_tokens=3, cost=Decimal("1"), created_at=long_ago),
        make_entry(user_id=bob.pk, input_tokens=4000, output_tokens=4, cost=Decimal("7")),
    ):
        usage_record(entry)
    usage_flush()

    assert usage_totals(user_id=alice.pk) == {"requests": 3, "input_tokens": 330, "output_tokens": 6,
                                              "cost": Decimal("1.2500000001")}
    assert usage_totals(user_id=alice.pk, since=timezone.now() - timedelta(days=30)) == {
        "requests": 2, "input_tokens": 30, "output_tokens": 3, "cost": Decimal("0.2500000001")}
    assert usage_totals(user_id=make_user("carol", tier=None).pk) == {"requests": 0, "input_tokens": 0, "output_tokens": 0,
                                                          "cost": Decimal(0)}


@pytest.mark.django_db
def test_it_keeps_a_row_whose_values_the_database_would_refuse(writer_paused, make_entry, caplog) -> None:
    # Negative or oversized counts break the table's CHECK constraints; SQLite's INSERT OR IGNORE dropped such a
    # row without a word (issue 16, item 14). The row is kept, its values brought into range, and it is said.
    entry = make_entry(input_tokens=-50, output_tokens=10**12, attempts=-1, cost=Decimal("-0.5"), latency_ms=-3.0)

    usage_record(entry)
    usage_flush()

    row = UsageLog.objects.get(request_id=entry.request_id)
    assert (row.input_tokens, row.output_tokens, row.attempts, row.cost) == (0, 2**31 - 1, 0, 0)
    assert entry.request_id in caplog.text
