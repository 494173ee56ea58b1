from django.core.validators import MaxValueValidator, MinValueValidator
from django.db import models
from django.utils import timezone


class Experiment(models.Model):
    """A server-side A/B test: requests that name it (or use its prompt template) are split stickily between its
    arms, and a sequential test on the primary metric decides (experiments/services.py, experiments/stats.py)."""

    class Status(models.TextChoices):
        DRAFT = "draft", "Draft"
        RUNNING = "running", "Running"
        STOPPED = "stopped", "Stopped"
        PROMOTED = "promoted", "Promoted"

    class Metric(models.TextChoices):
        SUCCESS = "success", "Success rate"
        FEEDBACK = "feedback", "User feedback (thumbs up rate)"
        COST = "cost", "Cost per request"
        LATENCY = "latency", "Latency"
        JUDGE = "judge", "Judge score"

    key = models.SlugField(max_length=64, unique=True,
                           help_text="Requests join by naming it: metadata.experiment or the x-llmhub-experiment header.")
    name = models.CharField(max_length=200)
    description = models.TextField(blank=True)
    prompt_name = models.CharField(max_length=100, blank=True, db_index=True,
                                   help_text="Requests using this prompt template by name (metadata.prompt) join too.")
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.DRAFT)
    primary_metric = models.CharField(max_length=16, choices=Metric.choices, default=Metric.SUCCESS)
    judge_model = models.CharField(max_length=100, blank=True, help_text="Judge metric: the model that scores answers.")
    judge_sample_rate = models.FloatField(default=0.1, validators=[MinValueValidator(0), MaxValueValidator(1)])
    alpha = models.FloatField(default=0.05, validators=[MinValueValidator(0.001), MaxValueValidator(0.5)],
                              help_text="The false-positive rate kept under continuous monitoring.")
    power = models.FloatField(default=0.8, validators=[MinValueValidator(0.5), MaxValueValidator(0.999)])
    minimum_effect = models.FloatField(default=0.05, validators=[MinValueValidator(0.001), MaxValueValidator(10)],
                                       help_text="The smallest relative difference worth finding (0.05 = 5%).")
    min_samples = models.PositiveIntegerField(default=100, help_text="Per arm, before the test looks.")
    auto_promote = models.BooleanField(default=False, help_text="Promote a significant winner without a click.")
    guardrail_cost_ratio = models.FloatField(default=2.0, validators=[MinValueValidator(1.0)],
                                             help_text="An arm whose cost per request reaches this multiple of the "
                                                       "control's is stopped.")
    guardrail_error_rate = models.FloatField(default=0.2, validators=[MinValueValidator(0), MaxValueValidator(1)],
                                             help_text="An arm whose error rate exceeds this is stopped.")
    guardrail_min_requests = models.PositiveIntegerField(default=20, help_text="Per arm, before guardrails apply.")
    decision = models.TextField(blank=True, help_text="The last evaluation's decision and why.")
    evaluated_at = models.DateTimeField(null=True, blank=True)
    started_at = models.DateTimeField(null=True, blank=True)
    ended_at = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["-created_at"]

    def __str__(self) -> str:
        return self.key


class Arm(models.Model):
    """One variant: a template version × a model × parameters, with its traffic weight. The first (by position)
    is the control."""

    class State(models.TextChoices):
        ACTIVE = "active", "Active"
        STOPPED = "stopped", "Stopped"
        WINNER = "winner", "Winner"

    experiment = models.ForeignKey(Experiment, on_delete=models.CASCADE, related_name="arms")
    name = models.SlugField(max_length=50)
    position = models.PositiveSmallIntegerField(default=0)
    template_ref = models.CharField(max_length=150, blank=True, help_text='A prompt template version: "name@version".')
    model_id = models.CharField(max_length=100, help_text="The registry model id this arm calls.")
    params = models.JSONField(default=dict, blank=True, help_text='Request parameters, e.g. {"temperature": 0.2}.')
    weight = models.PositiveIntegerField(default=1, help_text="Its share of traffic, relative to the other arms'.")
    state = models.CharField(max_length=16, choices=State.choices, default=State.ACTIVE)
    reason = models.TextField(blank=True, help_text="Why it was stopped or promoted.")
    p_value = models.FloatField(null=True, blank=True,
                                help_text="Always-valid p-value against the control (running minimum).")

    class Meta:
        ordering = ["experiment", "position", "id"]
        constraints = [models.UniqueConstraint(fields=["experiment", "name"], name="experiments_arm_unique_name")]

    def __str__(self) -> str:
        return f"{self.experiment.key}/{self.name}"


class JudgeScore(models.Model):
    """A judge model's score (0..1) of one sampled request's answer."""

    experiment = models.ForeignKey(Experiment, on_delete=models.CASCADE, related_name="judge_scores")
    arm = models.CharField(max_length=50)
    request_id = models.CharField(max_length=64, unique=True)
    score = models.FloatField()
    created_at = models.DateTimeField(default=timezone.now)
