// Sorting and filtering of the case table. Without it the page still shows every row, in run order.
(function () {
  "use strict";
  var table = document.getElementById("case-table");
  if (!table) { return; }
  var body = table.tBodies[0];
  var rows = Array.prototype.slice.call(body.rows);
  var texts = rows.map(function (row) { return row.textContent.toLowerCase(); });
  var filters = Array.prototype.slice.call(document.querySelectorAll("select[data-column]"));
  var search = document.getElementById("case-search");
  var count = document.getElementById("case-count");
  var SEARCH_PAUSE_MS = 200;

  // Rows are reordered while the body is out of the document: in place, every moved row would
  // invalidate the style of its siblings (row striping), quadratic in the row count.
  function detached(change) {
    var next = body.nextSibling;
    table.removeChild(body);
    change();
    table.insertBefore(body, next);
  }

  function applyFilters() {
    var wanted = filters.filter(function (f) { return f.value !== ""; })
      .map(function (f) { return { column: parseInt(f.dataset.column, 10), value: f.value }; });
    var text = search.value.trim().toLowerCase();
    var shown = 0;
    rows.forEach(function (row, i) {
      var keep = wanted.every(function (f) { return row.cells[f.column].textContent === f.value; }) &&
        (text === "" || texts[i].indexOf(text) !== -1);
      row.hidden = !keep;
      if (keep) { shown += 1; }
    });
    count.textContent = shown + " of " + rows.length + " records";
  }

  // Cells without a value (data-v absent on a numeric column) sort last in both directions.
  function sortBy(header) {
    var column = header.cellIndex;
    var numeric = header.dataset.sort === "num";
    var descending = header.getAttribute("aria-sort") === "ascending";
    Array.prototype.forEach.call(table.tHead.rows[0].cells, function (th) { th.removeAttribute("aria-sort"); });
    header.setAttribute("aria-sort", descending ? "descending" : "ascending");
    var keyed = rows.map(function (row, i) {
      var cell = row.cells[column];
      var key = numeric ? (cell.hasAttribute("data-v") ? parseFloat(cell.getAttribute("data-v")) : null)
                        : cell.textContent.trim().toLowerCase();
      return { row: row, key: key, index: i };
    });
    keyed.sort(function (a, b) {
      if (a.key === null || b.key === null) { return (a.key === null) - (b.key === null) || a.index - b.index; }
      var order = a.key < b.key ? -1 : a.key > b.key ? 1 : a.index - b.index;
      return descending ? -order : order;
    });
    detached(function () { keyed.forEach(function (k) { body.appendChild(k.row); }); });
  }

  Array.prototype.forEach.call(table.tHead.rows[0].cells, function (th) {
    th.tabIndex = 0;
    th.addEventListener("click", function () { sortBy(th); });
    th.addEventListener("keydown", function (e) { if (e.key === "Enter") { sortBy(th); } });
  });
  filters.forEach(function (f) { f.addEventListener("change", applyFilters); });
  // Typing filters once it pauses, not on every key: a large table takes a moment to re-lay out.
  var typing = null;
  search.addEventListener("input", function () {
    clearTimeout(typing);
    typing = setTimeout(applyFilters, SEARCH_PAUSE_MS);
  });
  applyFilters();
})();
