// Copy-to-clipboard for the pull references, and a confirmation before a delete. The
// pages work without it: the references are shown in the buttons' labels too.
"use strict";
document.addEventListener("click", (event) => {
  const button = event.target.closest("button[data-copy]");
  if (!button || !navigator.clipboard) return;
  navigator.clipboard.writeText(button.dataset.copy).then(() => {
    button.classList.add("copied");
    button.setAttribute("title", "Copied: " + button.dataset.copy);
  });
});
document.addEventListener("submit", (event) => {
  const form = event.target.closest("form[data-confirm]");
  if (form && !window.confirm(form.dataset.confirm)) event.preventDefault();
});
