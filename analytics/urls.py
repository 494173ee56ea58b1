from django.urls import path

from analytics import apis

urlpatterns = [
    path("analytics/models/", apis.AnalyticsModelsApi.as_view(), name="analytics-models"),
    path("analytics/models/<str:model_id>/", apis.AnalyticsModelApi.as_view(), name="analytics-model"),
    path("analytics/recommendations/", apis.RecommendationListApi.as_view(), name="analytics-recommendations"),
]
