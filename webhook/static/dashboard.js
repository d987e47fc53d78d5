// celvern dashboard: the Policies page's filter box. Everything else is rendered by the server; this file is
// served from /static/dashboard.js so the Content-Security-Policy can forbid inline scripts.
"use strict";

function celvernFilterPolicies(input) {
  const terms = input.value.toLowerCase().split(/\s+/).filter((term) => term.length > 0);
  const rows = document.querySelectorAll('tr[data-testid="policy-row"]');
  let visible = 0;
  rows.forEach((row) => {
    const text = row.textContent.toLowerCase();
    const show = terms.every((term) => text.includes(term));
    row.hidden = !show;
    if (show) {
      visible += 1;
    }
  });
  const counter = document.getElementById("policies-visible");
  if (counter) {
    counter.textContent = String(visible);
  }
}

document.addEventListener("DOMContentLoaded", () => {
  const input = document.getElementById("policy-filter");
  if (input) {
    input.addEventListener("input", () => celvernFilterPolicies(input));
    if (input.value) {
      celvernFilterPolicies(input);
    }
  }
});
