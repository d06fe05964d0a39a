// Berth UI: copy buttons. The only script of the UI; the pages work
// without it (the commands are plain read-only text fields).
"use strict";

function copied(button) {
  const label = button.textContent;
  button.textContent = "Copied";
  button.classList.add("done");
  setTimeout(function () {
    button.textContent = label;
    button.classList.remove("done");
  }, 2000);
}

function copyFrom(button) {
  const field = document.getElementById(button.dataset.copyTarget);
  if (!field) {
    return;
  }
  const text = field.value;
  const fallback = function () {
    field.focus();
    field.select();
    if (document.execCommand("copy")) {
      copied(button);
    }
  };
  if (navigator.clipboard && window.isSecureContext) {
    navigator.clipboard.writeText(text).then(function () { copied(button); }, fallback);
  } else {
    fallback();
  }
}

document.addEventListener("click", function (event) {
  const button = event.target.closest("button.copy-button");
  if (button) {
    copyFrom(button);
  }
});

// A click in a command field selects all of it, ready for Ctrl+C.
document.addEventListener("focusin", function (event) {
  if (event.target.matches("input.command")) {
    event.target.select();
  }
});
