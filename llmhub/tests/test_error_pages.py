import pytest


@pytest.mark.parametrize("path", ["/api/models/a%2fb/extra/", "/api/no-such-route/"])
def test_it_answers_an_unknown_api_route_with_the_json_error_shape(client, db, path):
    response = client.get(path)
    assert response.status_code == 404
    assert response.json() == {"error": {"code": "not_found", "message": "Not found."}}


def test_it_keeps_the_html_404_for_pages(client, db):
    response = client.get("/no-such-page/")
    assert response.status_code == 404
    assert response["Content-Type"].startswith("text/html")
