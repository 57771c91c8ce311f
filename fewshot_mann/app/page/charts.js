// fewshot-mann serve: the reliability check's per-class table, confusion matrix and reliability diagram,
// drawn as DOM tables and inline SVG (nothing loaded from elsewhere). Class names come from folder names:
// they reach the page only as text (textContent), never as markup.
"use strict";
const Charts = (() => {
  const NS = "http://www.w3.org/2000/svg";
  const pct = (x) => (x === null || x === undefined ? "–" : `${(100 * x).toFixed(1)} %`);

  function node(tag, attrs = {}, ...children) {  // an SVG element for tags given as "svg:...", else HTML
    const isSvg = tag.startsWith("svg:");
    const n = isSvg ? document.createElementNS(NS, tag.slice(4)) : document.createElement(tag);
    for (const [k, v] of Object.entries(attrs)) {
      if (k === "text") n.textContent = v; else n.setAttribute(k, String(v));
    }
    for (const c of children) n.append(c);
    return n;
  }

  function titled(shape, text) {  // an SVG shape with a hover tooltip
    shape.append(node("svg:title", {text}));
    return shape;
  }

  function named(label, name) {  // a label with its full name as tooltip (beside it: the label's text stays the name)
    return node("svg:g", {}, node("svg:title", {text: name}), label);
  }

  function short(name, chars) {
    return name.length > chars ? `${name.slice(0, chars - 1)}…` : name;
  }

  function perClassTable(perClass) {
    const rows = Object.entries(perClass).map(([name, r]) =>
      node("tr", {}, node("td", {class: "class-name", text: name, title: name}), node("td", {text: pct(r.accuracy)}),
           node("td", {text: String(r.queries)})));
    return node("table", {class: "per-class"},
                node("thead", {}, node("tr", {}, ...["class", "accuracy", "queries"].map((t) => node("th", {text: t})))),
                node("tbody", {}, ...rows));
  }

  function denseCounts(confusion) {  // "counts", or the [truth, answer, count] pairs of a large folder
    if (confusion.counts) return confusion.counts;
    const n = confusion.classes.length;
    const counts = Array.from({length: n}, () => new Array(n).fill(0));
    for (const [i, j, c] of confusion.nonzero || []) counts[i][j] = c;
    return counts;
  }

  function confusionMatrix(confusion) {
    const names = confusion.classes, counts = denseCounts(confusion), n = names.length;
    const cell = Math.max(6, Math.min(36, Math.floor(480 / n)));
    const font = Math.min(12, cell - 2), labelled = cell >= 9, chars = 18;
    const reach = labelled ? chars * font * 0.62 : 0;  // the widest name's length on the page
    const left = 8 + reach, top = 8 + reach * 0.72 + font;
    const box = node("svg:svg", {class: "confusion", width: left + n * cell + top, height: top + n * cell + 4,
                                 role: "img", "aria-label": "confusion matrix: rows the true class, columns the answer"});
    counts.forEach((row, i) => {
      const total = row.reduce((a, b) => a + b, 0);
      row.forEach((c, j) => {
        const share = total ? c / total : 0;
        const rect = node("svg:rect", {x: left + j * cell, y: top + i * cell, width: cell - 1, height: cell - 1,
                                       class: i === j ? "cell diagonal" : "cell", "fill-opacity": (0.06 + 0.94 * share).toFixed(3)});
        box.append(titled(rect, `${names[i]} answered ${names[j]}: ${c} of ${total} (${pct(share)})`));
        if (c && cell >= 18) {
          box.append(node("svg:text", {x: left + j * cell + cell / 2, y: top + i * cell + cell / 2 + font / 3,
                                       "font-size": font, class: share > 0.5 ? "count light" : "count", text: String(c)}));
        }
      });
    });
    if (labelled) {
      names.forEach((name, k) => {
        const mid = k * cell + cell / 2 + font / 3;
        box.append(named(node("svg:text", {x: left - 4, y: top + mid, "font-size": font,
                                            "text-anchor": "end", class: "truth-name", text: short(name, chars)}), name));
        const x = left + k * cell + cell / 2, y = top - 4;
        box.append(named(node("svg:text", {x, y, "font-size": font, transform: `rotate(-45 ${x} ${y})`,
                                            class: "answer-name", text: short(name, chars)}), name));
      });
    }
    return node("figure", {class: "confusion-figure"}, box,
                node("figcaption", {text: "Confusion: rows the true class, columns the answer; shading by the share of " +
                                          "the row's queries (hover a cell for its count)."}));
  }

  function axes(size, pad) {  // the reliability diagram's frame, ticks and the diagonal
    const parts = [node("svg:rect", {x: pad, y: 8, width: size, height: size, class: "frame"})];
    for (const t of [0, 0.25, 0.5, 0.75, 1]) {
      parts.push(node("svg:text", {x: pad + t * size, y: size + 22, "text-anchor": "middle", "font-size": 10, text: String(t)}));
      parts.push(node("svg:text", {x: pad - 4, y: 8 + (1 - t) * size + 3, "text-anchor": "end", "font-size": 10, text: String(t)}));
    }
    parts.push(node("svg:text", {x: pad + size / 2, y: size + 38, "text-anchor": "middle", "font-size": 11,
                                 text: "confidence (top probability)"}));
    parts.push(node("svg:text", {x: 12, y: 8 + size / 2, "font-size": 11, "text-anchor": "middle",
                                 transform: `rotate(-90 12 ${8 + size / 2})`, text: "accuracy"}));
    parts.push(node("svg:line", {x1: pad, y1: 8 + size, x2: pad + size, y2: 8, class: "diagonal"}));
    return parts;
  }

  function lowConfidence(low) {  // what the low-confidence flag leaves standing
    if (!low || low.threshold === undefined) return "";
    const cut = `the low-confidence cut ${low.threshold.toFixed(2)}`;
    if (!low.fraction_unflagged) return `No answer reached ${cut}.`;
    return `${pct(low.fraction_unflagged)} of the answers reached ${cut}, ${pct(low.unflagged_accuracy)} of them right.`;
  }

  function reliabilityDiagram(calibration) {
    const size = 220, pad = 40;
    const box = node("svg:svg", {class: "reliability-diagram", width: pad + size + 10, height: size + 48, role: "img",
                                 "aria-label": "reliability diagram: accuracy by confidence bin, the diagonal perfect calibration"});
    box.append(...axes(size, pad));
    const queries = calibration.bins.reduce((a, b) => a + b.count, 0);
    for (const b of calibration.bins) {
      if (!b.count) continue;
      const x = pad + b.lower * size, w = (b.upper - b.lower) * size - 1, h = b.accuracy * size;
      const bar = node("svg:rect", {x, y: 8 + size - h, width: w, height: h, class: "bin"});
      box.append(titled(bar, `confidence ${b.lower.toFixed(2)}–${b.upper.toFixed(2)}: ${b.count} answers, ` +
                             `${pct(b.accuracy)} right at mean confidence ${b.confidence.toFixed(3)}`));
    }
    const caption = `ECE ${calibration.ece.toFixed(3)} at temperature ${Number(calibration.temperature).toFixed(2)}` +
      (calibration.before && calibration.temperature !== 1 ? ` (${calibration.before.ece.toFixed(3)} at temperature 1)` : "") +
      `, over ${queries} answers. Bars: the share right of the answers in each confidence bin; the diagonal: ` +
      "perfectly calibrated. " + lowConfidence(calibration.low_confidence);
    return node("figure", {class: "reliability-figure"}, box, node("figcaption", {class: "ece", text: caption}));
  }

  // One block per kshot row: its heading, then the three side by side.
  function trustBlock(row) {
    const parts = [];
    if (row.per_class) parts.push(node("figure", {class: "per-class-figure"}, perClassTable(row.per_class),
                                       node("figcaption", {text: "Accuracy of each class's queries over the trials."})));
    if (row.confusion) parts.push(confusionMatrix(row.confusion));
    if (row.calibration) parts.push(reliabilityDiagram(row.calibration));
    return node("div", {class: "trust", "data-shots": row.shots},
                node("h3", {text: `${row.ways}-way ${row.shots}-shot: ${pct(row.accuracy)} over ${row.episodes} trials`}),
                node("div", {class: "trust-charts"}, ...parts));
  }

  return {trustBlock};
})();
