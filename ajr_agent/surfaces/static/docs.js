// AJR API documentation: rendered in the page from /openapi.json, so it always matches the service.
// No Swagger UI: the service runs where there is no internet, and this is all a reader needs.
"use strict";

(() => {
  function h(tag, attrs, ...children) {
    const el = document.createElement(tag);
    for (const [key, value] of Object.entries(attrs || {})) {
      if (value === null || value === undefined) continue;
      if (key === "text") el.textContent = value;
      else el.setAttribute(key, String(value));
    }
    for (const child of children.flat(Infinity)) {
      if (child === null || child === undefined || child === false) continue;
      el.append(child instanceof Node ? child : document.createTextNode(String(child)));
    }
    return el;
  }

  const refName = (ref) => ref.split("/").pop();

  // The descriptions mark code with backticks, as in Markdown.
  function rich(text) {
    return (text || "").split("`").map((part, i) => (i % 2 ? h("code", { text: part }) : part));
  }

  // A JSON schema as a short type: `int`, `list[EventOut]`, `str | null`, `"a" | "b"`.
  function typeOf(schema) {
    if (!schema) return ["any"];
    if (schema.$ref) {
      const name = refName(schema.$ref);
      return [h("a", { href: `#schema-${name}`, text: name })];
    }
    if (schema.anyOf) return join(schema.anyOf.map(typeOf), " | ");
    if (schema.enum) return [schema.enum.map((v) => JSON.stringify(v)).join(" | ")];
    if (schema.const !== undefined) return [JSON.stringify(schema.const)];
    if (schema.type === "array") return ["list[", ...typeOf(schema.items), "]"];
    if (schema.type === "object" && schema.additionalProperties) return ["dict[str, ", ...typeOf(schema.additionalProperties), "]"];
    const names = { integer: "int", number: "float", string: "str", boolean: "bool", null: "null", object: "object" };
    return [names[schema.type] || schema.type || "any"];
  }

  function join(parts, sep) {
    return parts.flatMap((part, i) => (i ? [sep, ...part] : part));
  }

  function endpoint(path, method, op) {
    const params = op.parameters || [];
    const responses = Object.entries(op.responses || {});
    return h("div", { class: "doc-endpoint", id: op.operationId },
      h("div", { class: "doc-line" },
        h("span", { class: `method ${method}`, text: method.toUpperCase() }),
        h("span", { class: "doc-path", text: path }),
        op.security ? h("span", { class: "badge tone-warn", text: "operator token" }) : null),
      h("p", {}, rich(op.summary)),
      op.description ? h("p", { class: "muted" }, rich(op.description)) : null,
      params.length ? h("table", {},
        h("thead", {}, h("tr", {}, ["Parameter", "In", "Type", "Required", "Meaning"].map((t) => h("th", { text: t })))),
        h("tbody", {}, params.map((p) => h("tr", {},
          h("td", {}, h("code", { text: p.name })), h("td", { text: p.in }),
          h("td", {}, h("code", {}, typeOf(p.schema)), p.schema && p.schema.default !== undefined
            ? h("span", { class: "muted small", text: `  default ${JSON.stringify(p.schema.default)}` }) : null),
          h("td", { text: p.required ? "yes" : "no" }), h("td", {}, rich(p.description)))))) : null,
      h("table", {},
        h("thead", {}, h("tr", {}, ["Status", "Answer", "Type"].map((t) => h("th", { text: t })))),
        h("tbody", {}, responses.map(([code, r]) => {
          const [media, body] = Object.entries(r.content || {})[0] || ["", {}];
          return h("tr", {}, h("td", {}, h("code", { text: code })), h("td", {}, rich(r.description)),
            h("td", {}, h("code", {}, media ? [media, " "] : "", body.schema ? typeOf(body.schema) : "")));
        }))));
  }

  function schemaView(name, schema) {
    const required = new Set(schema.required || []);
    const rows = Object.entries(schema.properties || {}).map(([field, prop]) => h("div", {},
      h("span", { class: "field", text: field }), required.has(field) ? "" : "?", ": ",
      h("span", { class: "type" }, typeOf(prop)),
      prop.description ? h("span", { class: "desc" }, "  — ", rich(prop.description)) : null));
    return h("div", { class: "doc-endpoint", id: `schema-${name}` },
      h("div", { class: "doc-line" }, h("h3", { text: name })),
      schema.description ? h("p", { class: "muted" }, rich(schema.description)) : null,
      rows.length ? h("div", { class: "schema" }, rows)
        : h("div", { class: "schema" }, h("span", { class: "type" }, typeOf(schema))));
  }

  async function main() {
    const root = document.getElementById("docs");
    let doc;
    try {
      const answer = await fetch("/openapi.json");
      doc = await answer.json();
    } catch (error) {
      root.replaceChildren(h("p", { text: `Cannot read /openapi.json: ${error.message}` }));
      return;
    }
    const byTag = new Map();
    for (const [path, methods] of Object.entries(doc.paths)) {
      for (const [method, op] of Object.entries(methods)) {
        const tag = (op.tags || ["other"])[0];
        if (!byTag.has(tag)) byTag.set(tag, []);
        byTag.get(tag).push([path, method, op]);
      }
    }
    const titles = { api: "Reading", operator: "Operator actions", metrics: "Metrics", pages: "Pages" };
    const order = ["api", "operator", "metrics", "pages"].filter((t) => byTag.has(t));
    const schemas = Object.entries(doc.components.schemas).sort(([a], [b]) => a.localeCompare(b));
    root.replaceChildren(h("div", {},
      h("div", { class: "page-head" }, h("div", {},
        h("h1", { text: doc.info.title }),
        h("div", { class: "muted" }, `API version ${doc.info.version}. ${doc.info.description} The machine-readable document: `,
          h("a", { href: "/openapi.json", text: "/openapi.json" }), " (OpenAPI ", doc.openapi, ")."))),
      h("section", { class: "panel" },
        h("div", { class: "panel-head" }, h("h2", { text: "Endpoints" }),
          h("span", { class: "hint", text: "reading needs no credentials; operator actions need the operator token" })),
        h("table", {}, h("tbody", {}, order.flatMap((tag) => byTag.get(tag)).map(([path, method, op]) => h("tr", {},
          h("td", {}, h("span", { class: `method ${method}`, text: method.toUpperCase() })),
          h("td", {}, h("a", { class: "doc-path", href: `#${op.operationId}`, text: path })),
          h("td", {}, rich(op.summary))))))),
      order.map((tag) => h("section", { class: "panel" },
        h("div", { class: "panel-head" }, h("h2", { text: titles[tag] || tag })),
        byTag.get(tag).map(([path, method, op]) => endpoint(path, method, op)))),
      h("section", { class: "panel" },
        h("div", { class: "panel-head" }, h("h2", { text: "Schemas" }), h("span", { class: "hint", text: "every answer is one of these" })),
        schemas.map(([name, schema]) => schemaView(name, schema)))));
  }

  document.addEventListener("DOMContentLoaded", main);
})();
