// Inference node console: copy buttons, chart read-outs on hover and as tables, the custom grace
// field, and focus on a failed form's error summary.
// Served from static/; the pages work without it (forms post, charts are server-drawn SVG).
"use strict";

function copyFrom(button) {
  const target = document.getElementById(button.dataset.copy);
  const status = document.getElementById("copy-status");
  const done = (ok) => {
    button.textContent = ok ? "Copied" : "Copy failed: select and copy";
    if (status) status.textContent = ok ? "Token copied to the clipboard." : "";
  };
  target.select();
  if (navigator.clipboard && window.isSecureContext) {
    navigator.clipboard.writeText(target.value).then(() => done(true), () => done(document.execCommand("copy")));
  } else {
    done(document.execCommand("copy"));
  }
}

function formatBucket(startIso, stepSeconds, index) {
  const at = new Date(Date.parse(startIso) + index * stepSeconds * 1000);
  const iso = at.toISOString();
  return stepSeconds >= 3600 ? iso.slice(5, 13).replace("T", " ") + ":00" : iso.slice(11, 16);
}

function attachChart(svg) {
  const script = document.getElementById(svg.dataset.hover);
  if (!script) return;
  const data = JSON.parse(script.textContent);
  const figure = svg.closest("figure");
  const tip = figure.querySelector(".chart-tip");
  const cursor = svg.querySelector(".cursor");
  const left = Number(svg.dataset.left), right = Number(svg.dataset.right);
  const count = data.series.length ? data.series[0].values.length : 0;
  svg.addEventListener("mousemove", (event) => {
    const box = svg.getBoundingClientRect();
    const x = (event.clientX - box.left) * (svg.viewBox.baseVal.width / box.width);
    const index = Math.floor(((x - left) / (right - left)) * count);
    if (index < 0 || index >= count) return;
    const cx = left + (index + 0.5) * (right - left) / count;
    cursor.setAttribute("x1", cx);
    cursor.setAttribute("x2", cx);
    cursor.setAttribute("visibility", "visible");
    const parts = data.series.map((s) => `${s.label} ${s.values[index]}`);
    tip.textContent = `${formatBucket(data.start, data.step, index)} UTC · ${parts.join(" · ")}`;
    tip.hidden = false;
    const px = (cx / svg.viewBox.baseVal.width) * box.width;
    tip.style.left = Math.min(px + 12, box.width - tip.offsetWidth) + "px";
  });
  svg.addEventListener("mouseleave", () => {
    tip.hidden = true;
    cursor.setAttribute("visibility", "hidden");
  });
}

function customGrace(form) {
  const custom = form.querySelector("#id_custom_grace");
  if (!custom) return;
  const field = custom.closest(".field");
  const sync = () => {
    const chosen = form.querySelector("input[name=grace]:checked");
    field.hidden = !(chosen && chosen.value === "custom") && !field.classList.contains("has-error");
  };
  form.querySelectorAll("input[name=grace]").forEach((radio) => radio.addEventListener("change", sync));
  sync();
}

function chartTable(details) {
  // Built on first open from the data the chart already embeds: every bucket's values, for
  // keyboard and screen-reader users (the hover read-out needs a mouse).
  const script = document.getElementById(details.dataset.for);
  const box = details.querySelector(".table-scroll");
  if (!script || !box || box.querySelector("table")) return;
  const data = JSON.parse(script.textContent);
  const table = document.createElement("table");
  table.className = "table chart-table";
  const head = table.createTHead().insertRow();
  ["Time (UTC)", ...data.series.map((s) => s.label)].forEach((text, i) => {
    const th = document.createElement("th");
    th.scope = "col";
    th.textContent = text;
    if (i) th.className = "num";
    head.appendChild(th);
  });
  const body = table.createTBody();
  const count = data.series.length ? data.series[0].values.length : 0;
  const number = new Intl.NumberFormat("en-US");
  for (let i = 0; i < count; i++) {
    const row = body.insertRow();
    const th = document.createElement("th");
    th.scope = "row";
    th.textContent = formatBucket(data.start, data.step, i);
    row.appendChild(th);
    data.series.forEach((s) => {
      const cell = row.insertCell();
      cell.className = "num";
      cell.textContent = number.format(s.values[i]);
    });
  }
  box.replaceChildren(table);
}

function focusErrorSummary() {
  // A failed submit opens on its error summary (role=alert), wherever the form sits.
  const summary = document.querySelector(".error-summary");
  if (!summary) return;
  summary.focus();
  summary.querySelectorAll("a[href^='#']").forEach((link) => {
    link.addEventListener("click", (event) => {
      const field = document.getElementById(link.getAttribute("href").slice(1));
      if (!field) return;
      event.preventDefault();
      field.focus();
      const label = document.querySelector(`label[for='${field.id}']`) || field;
      label.scrollIntoView({ block: "start" });
    });
  });
}

document.addEventListener("DOMContentLoaded", () => {
  document.querySelectorAll("button[data-copy]").forEach((button) => {
    button.addEventListener("click", () => copyFrom(button));
  });
  document.querySelectorAll("svg.chart-svg").forEach(attachChart);
  const rotate = document.getElementById("rotate-form");
  if (rotate) customGrace(rotate);
  document.querySelectorAll("details.chart-values").forEach((details) => {
    details.addEventListener("toggle", () => details.open && chartTable(details));
  });
  focusErrorSummary();
  const skip = document.querySelector(".skip-link");
  const main = document.getElementById("main");
  // Some browsers move only the scroll position to #main: put the focus there too.
  if (skip && main) skip.addEventListener("click", () => main.focus());
});
