// Django admin's tabular inlines leave their inputs unlabelled (the column header names them only visually) and
// scroll sideways without keyboard access: label each input by its column, and let the keyboard reach the scroll.
(() => {
  "use strict";
  const ready = () => {
    for (const group of document.querySelectorAll(".inline-group")) {
      if (group.scrollWidth > group.clientWidth && !group.hasAttribute("tabindex")) {
        group.tabIndex = 0;
        group.setAttribute("role", "region");
        group.setAttribute("aria-label", group.querySelector("h2")?.textContent.trim() || "Inline");
      }
      const headers = [...group.querySelectorAll("thead th")].map((th) => th.textContent.trim());
      for (const row of group.querySelectorAll("tbody tr")) {
        [...row.children].forEach((cell, index) => {
          for (const input of cell.querySelectorAll("input:not([type=hidden]), select, textarea")) {
            if (!input.labels?.length && !input.hasAttribute("aria-label")) {
              input.setAttribute("aria-label", input.name.endsWith("-DELETE") ? "Delete" : headers[index - 1] || headers[index] || input.name);
            }
          }
        });
      }
    }
  };
  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", ready);
  else ready();
})();
