// The browsable API is Django REST framework's own page: this fills in what its markup leaves out for assistive
// technology (a language, names for its format buttons, labels tied to their inputs, scrollable output reachable
// by keyboard), so the page passes the same accessibility check as llmhub's own pages.
(() => {
  "use strict";
  document.documentElement.lang ||= "en";
  for (const toggle of document.querySelectorAll(".dropdown-toggle")) {
    if (!toggle.textContent.trim() && !toggle.hasAttribute("aria-label")) toggle.setAttribute("aria-label", "Choose a format");
  }
  for (const label of document.querySelectorAll(".form-group > label:not([for])")) {
    const input = label.parentElement.querySelector("input, select, textarea");
    if (!input) continue;
    input.id ||= `drf-${input.name.replace(/\W/g, "-")}-${Math.random().toString(36).slice(2, 8)}`;
    label.htmlFor = input.id;
  }
  for (const output of document.querySelectorAll(".response-info > pre")) output.tabIndex = 0;
})();
