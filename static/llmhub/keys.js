// The /keys/ page: copy a new key's secret. The clipboard API needs a secure context (https, or localhost);
// elsewhere the text is selected and copied the old way.
"use strict";

document.addEventListener("click", async (event) => {
  const button = event.target.closest("button[data-copy]");
  if (!button) return;
  const input = document.getElementById(button.dataset.copy);
  const status = document.querySelector("[data-copy-status]");
  let copied = false;
  try {
    await navigator.clipboard.writeText(input.value);
    copied = true;
  } catch {
    input.select();
    copied = document.execCommand("copy");
  }
  button.textContent = copied ? "Copied" : "Copy";
  if (status) status.textContent = copied ? "Copied to the clipboard." : "Select the key and copy it yourself.";
});

// Selecting the whole key on focus makes a manual copy one keystroke.
document.querySelectorAll("input[data-secret]").forEach((input) => {
  input.addEventListener("focus", () => input.select());
});
