// Passkey ceremonies for the sign-in and account pages. The server makes
// the options and checks the answers; this only hands them to the browser.
"use strict";
(function () {
  // WebIDL dictionaries refuse null members: drop them.
  function clean(value) {
    if (Array.isArray(value)) return value.map(clean);
    if (value && typeof value === "object") {
      const out = {};
      for (const [k, v] of Object.entries(value)) if (v !== null) out[k] = clean(v);
      return out;
    }
    return value;
  }
  function fail(error) {
    const box = document.getElementById("passkey-error");
    if (box) {
      box.hidden = false;
      box.textContent = "The passkey did not work (" + (error && error.name || "error") + "). Try again.";
    }
  }
  const use = document.getElementById("use-passkey");
  if (use) {
    use.addEventListener("click", async function () {
      try {
        const options = JSON.parse(document.getElementById("passkey").dataset.options);
        const publicKey = PublicKeyCredential.parseRequestOptionsFromJSON(clean(options.publicKey));
        const credential = await navigator.credentials.get({ publicKey });
        document.getElementById("passkey-answer").value = JSON.stringify(credential.toJSON());
        document.getElementById("factor-form").submit();
      } catch (error) { fail(error); }
    });
  }
  const add = document.getElementById("add-passkey");
  if (add) {
    add.addEventListener("click", async function () {
      const form = document.getElementById("passkey-register");
      try {
        const body = new URLSearchParams({ csrf: form.elements.csrf.value });
        const answer = await fetch(form.dataset.optionsUrl, { method: "POST", body, credentials: "same-origin" });
        if (!answer.ok) throw { name: "HTTP " + answer.status };
        const options = await answer.json();
        const publicKey = PublicKeyCredential.parseCreationOptionsFromJSON(clean(options.publicKey));
        const credential = await navigator.credentials.create({ publicKey });
        form.elements.credential.value = JSON.stringify(credential.toJSON());
        form.submit();
      } catch (error) { fail(error); }
    });
  }
})();
