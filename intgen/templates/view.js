// intgen view: renders the parsed candidates from the page's JSON, one page at a time
// (inlined by intgen/view.py). Model text only ever becomes DOM text nodes, never markup.
(function () {
  "use strict";
  var started = performance.now();
  var DATA = JSON.parse(document.getElementById("intgen-data").textContent);
  var CANDS = DATA.candidates, PROBS = DATA.problems, TRACES = DATA.rollouts, RUN = DATA.run;
  var MEANING = {};
  DATA.reasons.forEach(function (r) { MEANING[r.reason] = r.meaning || r.detail; });
  var VERDICT = { c: "correct", w: "wrong", n: "no answer", u: "ungradable", "?": "unknown" };
  var $ = function (id) { return document.getElementById(id); };
  var HAS_MATH = typeof temml !== "undefined";
  var state = { status: "", reason: "", source: "", query: "", page: 0, size: parseInt($("f-size").value, 10) || 20,
                math: HAS_MATH };
  var haystack = null;  // lower-cased search text per candidate, built on the first search
  var matches = [];

  function append(node, child) {
    if (child === null || child === undefined || child === false) return;
    if (Array.isArray(child)) { child.forEach(function (c) { append(node, c); }); return; }
    node.appendChild(typeof child === "object" ? child : document.createTextNode(String(child)));
  }
  function el(tag, cls, children, attrs) {
    var node = document.createElement(tag);
    if (cls) node.className = cls;
    if (attrs) Object.keys(attrs).forEach(function (k) { node.setAttribute(k, attrs[k]); });
    append(node, children);
    return node;
  }
  // $$..$$, \[..\], \(..\) and $..$ (no line break; no space just inside the dollars; a closing
  // dollar not followed by a digit, so "$5 and $6" stays text); an escaped \$ opens nothing
  var MATH_RE = /(?<!\\)\$\$([\s\S]+?)\$\$|\\\[([\s\S]+?)\\\]|\\\(([\s\S]+?)\\\)|(?<!\\)\$(?=[^\s$])((?:\\[\s\S]|[^$\\\n])*?[^\s\\])\$(?!\d)/g;
  function math(tex, display, source) {
    var span = el("span", display ? "math display" : "math", null, { title: source });
    try {
      temml.render(tex, span, { displayMode: display, throwOnError: true });
      return span;
    } catch (e) {
      return document.createTextNode(source);  // not LaTeX after all: the text as written
    }
  }
  // model text, with its LaTeX rendered as MathML by Temml when the "math" box is ticked
  function rich(tag, cls, text) {
    var node = el(tag, cls);
    if (!state.math || text === null || text === undefined || !/[$\\]/.test(text)) { append(node, text); return node; }
    var last = 0, m;
    MATH_RE.lastIndex = 0;
    while ((m = MATH_RE.exec(text)) !== null) {
      if (m.index > last) node.appendChild(document.createTextNode(text.slice(last, m.index)));
      var display = m[1] !== undefined || m[2] !== undefined;
      node.appendChild(math(m[1] || m[2] || m[3] || m[4], display, m[0]));
      last = MATH_RE.lastIndex;
    }
    if (last < text.length) node.appendChild(document.createTextNode(text.slice(last)));
    return node;
  }
  function answer(cls, text) {
    if (!state.math || text === null || text === undefined) return el("div", cls, text === null || text === undefined ? "(none)" : text);
    return el("div", cls, math(text, false, text));
  }
  function pre(text) { return el("pre", "text", text === null || text === undefined ? "(none)" : text); }
  function details(summary, body, open) {
    var d = el("details", null, [el("summary", null, summary), body]);
    if (open) d.open = true;
    return d;
  }
  function pct(x) { return x === null || x === undefined ? "n/a" : (100 * x).toFixed(1) + "%"; }
  function rate(label, k, n, r) {
    return el("span", null, [label + " ", el("b", null, n ? k + "/" + n + " = " + pct(r) : "none")]);
  }

  function verdictRow(label, codes, answers, none) {
    var row = el("div", "verdicts", el("span", "verdict-label", label));
    if (!codes) { append(row, el("span", "rates", none)); return row; }
    for (var i = 0; i < codes.length; i++) {
      var a = answers && answers[i];
      row.appendChild(el("span", "v v-" + codes[i], null,
        { title: "sample " + i + ": " + VERDICT[codes[i]] + (a !== null && a !== undefined ? " (answer " + a + ")" : "") }));
    }
    return row;
  }

  function continuationTexts(kind, items) {
    return items.map(function (t) {
      return el("div", null, [
        el("div", "rates", kind + " sample " + t.i + ": " + t.v + (t.a !== null && t.a !== undefined ? " (answer " + t.a + ")" : "")),
        pre(t.x)]);
    });
  }

  function trace(c, tr) {
    var steps = tr.steps, loc = c.loc, list = el("ol", "steps");
    for (var i = 0; i < Math.min(loc - 1, steps.length); i++) {
      list.appendChild(el("li", "kept", [i === 0 ? el("span", "tag kept", "kept prefix") : null, rich("span", "text", steps[i])]));
    }
    if (loc >= 1 && loc <= steps.length) {
      list.appendChild(el("li", "blamed", [el("span", "tag blamed", "first error (step " + loc + ")"),
                                            rich("span", "text", steps[loc - 1])], { value: String(loc) }));
    }
    list.appendChild(el("li", "intervention", [el("span", "tag intervention", "intervention, in place of step " + loc),
                                                rich("span", "text", c.iv)]));
    var rest = steps.slice(loc);
    var parts = [list];
    if (rest.length) {
      var later = el("ol", "steps", rest.map(function (s) { return el("li", "dropped", rich("span", "text", s)); }),
                     { start: String(loc + 1) });
      parts.push(rest.length <= 2 ? later : details(rest.length + " later steps of the failed trace (dropped)", later));
    }
    parts.push(el("div", "rates", "the failed trace answered " + (tr.ans === null ? "nothing" : tr.ans) +
                  " (" + tr.verdict + "); " + steps.length + " steps"));
    return parts;
  }

  function decision(c) {
    if (c.acc) {
      return el("p", "why", [el("b", null, "accepted"), ": " + c.cc + " of " + c.cs +
        " check continuations reached the gold answer (at least " + RUN.min_correct + " needed)" +
        (c.stop ? "; checks stopped by " + c.stop : "") + (c.sel ? "; selected for SFT" : "; not selected for SFT (another candidate of this rollout was)")]);
    }
    return el("p", "why", [el("b", null, "rejected: " + c.why), MEANING[c.why] ? ": " + MEANING[c.why] : "",
                           c.why === "too_few_correct" ? " (" + c.cc + " of " + c.cs + ")" : ""]);
  }

  function card(c) {
    var p = PROBS[c.pid], tr = TRACES[c.rid];
    var cls = c.acc ? "accepted" : "rejected";
    var head = el("div", "card-head", [
      el("span", "card-id mono", c.id),
      el("span", "badge " + cls, c.acc ? "accepted" : "rejected: " + c.why),
      c.sel ? el("span", "badge selected", "SFT") : null,
      el("span", "rates", p.src),
      el("span", "rates", [rate("check", c.cc, c.cs, c.cr), " · ", rate("baseline", c.bc, c.bs, c.br), " · lift ",
                           el("b", null, c.lift === null ? "n/a" : (c.lift >= 0 ? "+" : "") + (100 * c.lift).toFixed(1) + " pts")])]);
    var top = el("div", "cols", [
      el("div", null, [el("h3", null, "Problem"), rich("div", "text problem", p.p)]),
      el("div", null, [el("h3", null, "Gold answer"), answer("text gold", p.gold),
                       details("reference solution", rich("div", "text reference", p.ref))])]);
    var checks = [
      el("h3", null, "Continuations"),
      verdictRow("check", c.cv, c.ca, "no check continuation answered"),
      verdictRow("baseline", c.bv, c.ba, "no baseline measured" + (RUN.baseline_for ? " (baseline.for = " + RUN.baseline_for + ")" : ""))];
    var texts = continuationTexts("check", c.ct).concat(continuationTexts("baseline", c.bt));
    if (texts.length) checks.push(details(texts.length + " continuation texts (prefix + " +
                                          "intervention, then what the policy wrote; baseline: the original step)", texts));
    var prop = [pre(c.prop)];
    if (c.solve !== null && c.solve !== undefined) prop.unshift(el("div", "rates", "solve turn:"), pre(c.solve), el("div", "rates", "proposer output:"));
    return el("article", "card " + cls, [
      head, top,
      el("h3", null, "Failed trace (rollout " + tr.i + ")"), trace(c, tr),
      checks, decision(c),
      details("proposer output (candidate " + c.ci + ")", prop)], { id: "c-" + c.id, "data-candidate": c.id });
  }

  function search(i) {
    if (!haystack) haystack = new Array(CANDS.length);
    if (haystack[i] === undefined) {
      var c = CANDS[i], p = PROBS[c.pid], tr = TRACES[c.rid];
      haystack[i] = [c.id, p.p, p.gold, tr.steps.join("\n"), c.iv, c.prop || "", c.why || "accepted"].join("\n").toLowerCase();
    }
    return haystack[i];
  }

  function filter() {
    var q = state.query.trim().toLowerCase();
    matches = [];
    for (var i = 0; i < CANDS.length; i++) {
      var c = CANDS[i];
      if (state.status === "accepted" && !c.acc) continue;
      if (state.status === "rejected" && c.acc) continue;
      if (state.reason && (c.why || "accepted") !== state.reason) continue;
      if (state.source && PROBS[c.pid].src !== state.source) continue;
      if (q && search(i).indexOf(q) < 0) continue;
      matches.push(i);
    }
  }

  function pager(box) {
    box.textContent = "";
    var pages = Math.max(1, Math.ceil(matches.length / state.size));
    var prev = el("button", null, "« previous", { type: "button" }), next = el("button", null, "next »", { type: "button" });
    prev.disabled = state.page <= 0;
    next.disabled = state.page >= pages - 1;
    prev.onclick = function () { go(state.page - 1); };
    next.onclick = function () { go(state.page + 1); };
    var from = matches.length ? state.page * state.size + 1 : 0, to = Math.min(matches.length, (state.page + 1) * state.size);
    append(box, [prev, next, "page " + (state.page + 1) + " of " + pages + " · candidates " + from + "–" + to + " of " +
                 matches.length + (matches.length !== CANDS.length ? " matching (" + CANDS.length + " in all)" : "")]);
  }

  function render() {
    var box = $("cards");
    box.textContent = "";
    if (!CANDS.length) {
      box.appendChild(el("div", "empty", "This run has no parsed candidate: no proposer output parsed into an intervention. " +
                                         "See “Why things were dropped” above."));
    } else if (!matches.length) {
      box.appendChild(el("div", "empty", "No candidate matches these filters."));
    }
    var page = matches.slice(state.page * state.size, (state.page + 1) * state.size);
    var frag = document.createDocumentFragment();
    page.forEach(function (i) { frag.appendChild(card(CANDS[i])); });
    box.appendChild(frag);
    pager($("pager-top"));
    pager($("pager-bottom"));
  }

  function go(page) {
    state.page = page;
    render();
    $("candidates").scrollIntoView();
  }
  function refilter() { state.page = 0; filter(); render(); }

  function options(select, values) {
    values.forEach(function (v) { select.appendChild(el("option", null, v, { value: v })); });
  }
  options($("f-reason"), DATA.decisions);
  options($("f-source"), DATA.sources);
  $("f-status").onchange = function () { state.status = this.value; refilter(); };
  $("f-reason").onchange = function () { state.reason = this.value; refilter(); };
  $("f-source").onchange = function () { state.source = this.value; refilter(); };
  $("f-size").onchange = function () { state.size = parseInt(this.value, 10); refilter(); };
  if (HAS_MATH) {
    $("f-math").checked = true;
    $("f-math").onchange = function () { state.math = this.checked; render(); };
  } else {
    $("f-math-label").style.display = "none";
  }
  var timer = null;
  $("f-query").oninput = function () {
    var value = this.value;
    clearTimeout(timer);
    timer = setTimeout(function () { state.query = value; refilter(); }, 200);
  };
  filter();
  render();
  // for scripts and tests: search / filter as the controls do; returns the number of matches
  window.intgenView = {
    show: function (opts) {
      Object.keys(opts || {}).forEach(function (k) { state[k] = opts[k]; });
      refilter();
      if (opts && opts.page !== undefined) { state.page = opts.page; render(); }
      return matches.length;
    }
  };
  document.body.setAttribute("data-rendered", String(document.querySelectorAll("#cards .card").length));
  document.body.setAttribute("data-render-ms", String(Math.round(performance.now() - started)));
})();
