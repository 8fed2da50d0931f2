// The Portcullis docs portal: Swagger UI on the merged document, and a
// banner for services whose document is stale, missing or left out.
(function () {
  "use strict";
  var body = document.body;

  function showStatus(status) {
    var box = document.getElementById("portcullis-status");
    var problems = (status.services || []).filter(function (s) {
      return s.state !== "ok";
    });
    if (problems.length === 0) {
      return;
    }
    var heading = document.createElement("strong");
    heading.textContent = "Some services' documents are not current:";
    var list = document.createElement("ul");
    problems.forEach(function (s) {
      var item = document.createElement("li");
      item.className = s.state;
      var when = s.last_success
        ? " (last fetched " + new Date(s.last_success * 1000).toISOString() + ")"
        : "";
      item.textContent = s.service + " — " + s.state + when + (s.error ? ": " + s.error : "");
      list.appendChild(item);
    });
    box.appendChild(heading);
    box.appendChild(list);
  }

  fetch(body.dataset.status, { credentials: "same-origin" })
    .then(function (r) { return r.json(); })
    .then(showStatus)
    .catch(function () {});

  window.ui = SwaggerUIBundle({
    url: body.dataset.spec,
    dom_id: "#swagger-ui",
    deepLinking: true,
    docExpansion: "list",
    presets: [SwaggerUIBundle.presets.apis],
    layout: "BaseLayout",
  });
})();
