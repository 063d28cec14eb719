// The page's script: the case table sorted, filtered and paged from its data, and the charts of families drawn
// when opened. Without it the boards and their charts are all there, and the case table shows its first page.
(function () {
  "use strict";
  var SEARCH_PAUSE_MS = 200;

  // A packed row (html._packed): ten fields, three per numeric cell (sort key or null, text, tooltip), the reason.
  // String fields are indices into the data's strings.
  var ROW = { hardware: 0, label: 1, seqSort: 2, seq: 3, dtype: 4, mask: 5, pass: 6, impl: 7, status: 8,
              statusText: 9, cells: 10, reason: 25 };
  // Each column of the table: the field it shows, the field it sorts by when numeric, its tooltip, its class.
  var COLUMNS = [{ text: ROW.hardware }, { text: ROW.label }, { text: ROW.seq, num: ROW.seqSort, css: "num" },
                 { text: ROW.dtype }, { text: ROW.mask }, { text: ROW.pass }, { text: ROW.impl, css: "impl" },
                 { text: ROW.statusText, status: true }];
  for (var k = 0; k < 5; k++) {
    var at = ROW.cells + 3 * k;
    COLUMNS.push({ num: at, text: at + 1, why: at + 2 });
  }
  COLUMNS.push({ text: ROW.reason, css: "reason" });

  function caseTable(table) {
    var blob = document.getElementById("case-data");
    if (!blob) { return; }
    var data = JSON.parse(blob.textContent);
    var strings = data.strings, rows = data.rows, n = rows.length;
    var pageRows = parseInt(table.dataset.pageRows, 10);
    var body = table.tBodies[0];
    var heads = table.tHead.rows[0].cells;
    var filters = Array.prototype.slice.call(document.querySelectorAll("select[data-column]"));
    var search = document.getElementById("case-search");
    var count = document.getElementById("case-count");
    var pager = document.getElementById("case-pager");
    var pageText = document.getElementById("case-page");
    var steps = pager.querySelectorAll("button");
    var order = null;     // row numbers in the current sort order; null: the run order
    var shown = null;     // row numbers that pass the filters, in order
    var page = 0;
    var ids = null, ranks = null, haystacks = null;  // built on first use

    function stringId(value) {
      if (!ids) {
        ids = new Map();
        strings.forEach(function (s, i) { ids.set(s, i); });
      }
      return ids.has(value) ? ids.get(value) : -1;
    }

    // Every string's place in lower-case order, so that a text column sorts by integers.
    function textRanks() {
      if (!ranks) {
        var lower = strings.map(function (s) { return s.trim().toLowerCase(); });
        var byText = strings.map(function (s, i) { return i; });
        byText.sort(function (a, b) { return lower[a] < lower[b] ? -1 : lower[a] > lower[b] ? 1 : 0; });
        ranks = new Float64Array(strings.length);
        for (var i = 0; i < byText.length; i++) {
          ranks[byText[i]] = i > 0 && lower[byText[i]] === lower[byText[i - 1]] ? ranks[byText[i - 1]] : i;
        }
      }
      return ranks;
    }

    function haystack(i) {
      if (!haystacks) { haystacks = new Array(n); }
      if (haystacks[i] === undefined) {
        var r = rows[i], parts = [];
        for (var c = 0; c < COLUMNS.length; c++) { parts.push(strings[r[COLUMNS[c].text]]); }
        haystacks[i] = parts.join("\t").toLowerCase();
      }
      return haystacks[i];
    }

    // A row as the server renders it (report.html): text through textContent only, never as markup.
    function rowElement(r) {
      var tr = document.createElement("tr");
      for (var c = 0; c < COLUMNS.length; c++) {
        var col = COLUMNS[c], td = document.createElement("td");
        var css = col.css;
        if (col.status) {
          css = "status " + strings[r[ROW.status]];
        } else if (col.why !== undefined) {
          css = r[col.num] === null ? "num why" : "num";
          if (strings[r[col.why]]) { td.title = strings[r[col.why]]; }
        }
        if (css) { td.className = css; }
        if (col.num !== undefined && r[col.num] !== null) { td.setAttribute("data-v", r[col.num]); }
        td.textContent = strings[r[col.text]];
        tr.appendChild(td);
      }
      return tr;
    }

    function total() { return shown ? shown.length : n; }

    function showPage() {
      var start = page * pageRows, end = Math.min(total(), start + pageRows);
      var rowsOut = document.createDocumentFragment();
      for (var i = start; i < end; i++) { rowsOut.appendChild(rowElement(rows[shown ? shown[i] : i])); }
      body.textContent = "";
      body.appendChild(rowsOut);
      status();
    }

    function status() {
      var all = total(), start = page * pageRows;
      count.textContent = all + " of " + n + " records";
      pager.hidden = n <= pageRows;
      pageText.textContent = all ? "rows " + (start + 1) + "–" + Math.min(all, start + pageRows) + " of " + all : "no rows";
      steps[0].disabled = page === 0;
      steps[1].disabled = start + pageRows >= all;
    }

    function applyFilters() {
      var wanted = filters.filter(function (f) { return f.value !== ""; }).map(function (f) {
        return { field: COLUMNS[parseInt(f.dataset.column, 10)].text, id: stringId(f.value) };
      });
      var text = search.value.trim().toLowerCase();
      var out = [];
      for (var j = 0; j < n; j++) {
        var i = order ? order[j] : j, r = rows[i], keep = true;
        for (var w = 0; w < wanted.length && keep; w++) { keep = r[wanted[w].field] === wanted[w].id; }
        if (keep && (text === "" || haystack(i).indexOf(text) !== -1)) { out.push(i); }
      }
      shown = out;
      page = 0;
      showPage();
    }

    // Cells without a value (no sort key in a numeric column) sort last in both directions; ties keep run order.
    function sortBy(header) {
      var col = COLUMNS[header.cellIndex];
      var descending = header.getAttribute("aria-sort") === "ascending";
      Array.prototype.forEach.call(heads, function (th) { th.removeAttribute("aria-sort"); });
      header.setAttribute("aria-sort", descending ? "descending" : "ascending");
      var keys = new Float64Array(n), missing = new Uint8Array(n), i;
      if (col.num !== undefined) {
        for (i = 0; i < n; i++) {
          var v = rows[i][col.num];
          if (v === null) { missing[i] = 1; } else { keys[i] = v; }
        }
      } else {
        var rank = textRanks();
        for (i = 0; i < n; i++) { keys[i] = rank[rows[i][col.text]]; }
      }
      var sign = descending ? -1 : 1;
      order = new Int32Array(n);
      for (i = 0; i < n; i++) { order[i] = i; }
      order.sort(function (a, b) {
        if (missing[a] || missing[b]) { return (missing[a] - missing[b]) || a - b; }
        return sign * (keys[a] - keys[b]) || a - b;
      });
      applyFilters();
    }

    function onHeading(event) {
      var th = event.target.closest("th");
      if (th && (event.type === "click" || event.key === "Enter")) { sortBy(th); }
    }

    Array.prototype.forEach.call(heads, function (th) { th.tabIndex = 0; });
    table.tHead.addEventListener("click", onHeading);
    table.tHead.addEventListener("keydown", onHeading);
    filters.forEach(function (f) { f.addEventListener("change", applyFilters); });
    pager.addEventListener("click", function (event) {
      var button = event.target.closest("button");
      if (!button) { return; }
      page += parseInt(button.dataset.step, 10);
      showPage();
      table.scrollIntoView();
    });
    // Typing filters once it pauses, not on every key.
    var typing = null;
    search.addEventListener("input", function () {
      clearTimeout(typing);
      typing = setTimeout(applyFilters, SEARCH_PAUSE_MS);
    });
    // A reload may restore the form's values: then the rows must follow them; else the server's first page stands.
    if (search.value.trim() !== "" || filters.some(function (f) { return f.value !== ""; })) {
      applyFilters();
    } else {
      status();
    }
  }

  // Families of charts past the page's budget travel gzipped (#family-charts) and are drawn on opening.
  function lazyCharts() {
    var blob = document.getElementById("family-charts");
    if (!blob) { return; }
    var families = null;
    function inflate() {
      if (!families) {
        var text = atob(JSON.parse(blob.textContent).gzip), bytes = new Uint8Array(text.length);
        for (var i = 0; i < text.length; i++) { bytes[i] = text.charCodeAt(i); }
        var stream = new Blob([bytes]).stream().pipeThrough(new DecompressionStream("gzip"));
        families = new Response(stream).text().then(JSON.parse);
      }
      return families;
    }
    // The chart markup is charts.py's own, its text already escaped there: it goes in as markup.
    document.addEventListener("toggle", function (event) {
      var details = event.target;
      if (!details.open || !details.dataset || details.dataset.lazy === undefined) { return; }
      var box = details.querySelector(".charts");
      if (typeof DecompressionStream === "undefined") {
        box.querySelector(".lazy").textContent = "This browser cannot inflate the charts the page carries (it lacks DecompressionStream).";
        return;
      }
      var which = parseInt(details.dataset.lazy, 10);
      delete details.dataset.lazy;
      inflate().then(function (all) {
        box.innerHTML = all[which].map(function (svg) { return "<figure>" + svg + "</figure>"; }).join("");
      });
    }, true);
  }

  var table = document.getElementById("case-table");
  if (table) { caseTable(table); }
  lazyCharts();
  performance.mark("attnbench-ready");
})();
