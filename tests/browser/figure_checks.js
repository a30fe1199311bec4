// What a learner sees of every plotly figure on the page, read from plotly.js's own layout (_fullLayout):
// axis ranges against the data they hold, subplots against the width they are shown in, tick labels.
// Used on JupyterLab's page and on the HTML that `make run` writes. Returns one record per figure.
() => {
  const LOG_SLACK_DECADES = 1.5; // a log axis may reach this far (or one data span) past its data
  const LINEAR_SLACK_SPANS = 2.0; // a linear axis may reach this many data spans past its data
  const BAD_TICK = [/,\d{3}\.\d/, /\d\.\d{2,}k$/]; // "8,192.001", "16.384k": the dtick=log10(2) look

  const numbers = (arr) => (Array.isArray(arr) || ArrayBuffer.isView(arr) ? Array.from(arr) : [])
    .filter((v) => typeof v === 'number' && Number.isFinite(v));

  // Numeric values one trace puts on an axis letter ('x' or 'y'), error bars and bar bases included.
  function traceValues(trace, letter) {
    if (trace.visible !== true) return null;
    if (['histogram', 'histogram2d', 'heatmap', 'contour', 'pie', 'table'].includes(trace.type)) return null;
    let vals = numbers(trace[letter]);
    const err = trace['error_' + letter];
    if (err && err.visible && err.type === 'data') {
      const plus = numbers(err.array);
      const minus = err.symmetric === false ? numbers(err.arrayminus) : plus;
      const base = numbers(trace[letter]);
      vals = vals.concat(base.map((v, i) => v + (plus[i] || 0)), base.map((v, i) => v - (minus[i] || 0)));
    }
    const valueAxis = trace.orientation === 'h' ? 'x' : 'y';
    if (trace.type === 'bar' && letter === valueAxis && vals.length) vals.push(0);
    return vals;
  }

  function checkAxis(gd, ax) {
    const letter = ax._id[0];
    if (!['linear', 'log'].includes(ax.type) || !Array.isArray(ax.range)) return null;
    let vals = [];
    for (const trace of gd._fullData) {
      if ((trace[letter + 'axis'] || letter) !== ax._id) continue;
      const v = traceValues(trace, letter);
      if (v) vals = vals.concat(v);
    }
    if (ax.type === 'log') vals = vals.filter((v) => v > 0).map(Math.log10);
    if (!vals.length) return null;
    const lo = Math.min(...vals), hi = Math.max(...vals);
    const [r0, r1] = [Math.min(...ax.range), Math.max(...ax.range)];
    let slack;
    if (ax.type === 'log') slack = Math.max(LOG_SLACK_DECADES, hi - lo);
    else slack = LINEAR_SLACK_SPANS * Math.max(hi - lo, 0.05 * Math.max(Math.abs(hi), Math.abs(lo)), 1e-12);
    const shown = (v) => (ax.type === 'log' ? `1e${v.toFixed(1)}` : v.toPrecision(4));
    const record = { axis: ax._name, type: ax.type, data: [shown(lo), shown(hi)], range: [shown(r0), shown(r1)] };
    if (r0 < lo - slack || r1 > hi + slack) {
      record.problem = `${ax._name} range [${record.range}] reaches far beyond its data [${record.data}]`;
    }
    const ticks = (ax._vals || []).map((t) => String(t.text || '').replace(/<[^>]*>/g, ''));
    const bad = ticks.filter((t) => BAD_TICK.some((re) => re.test(t)));
    if (bad.length) record.tickProblem = `${ax._name} tick labels read ${bad.slice(0, 3).join(', ')}`;
    return record;
  }

  const figures = [];
  document.querySelectorAll('.js-plotly-plot').forEach((gd, index) => {
    const fl = gd._fullLayout;
    if (!fl) return;
    const box = gd.getBoundingClientRect();
    const holder = gd.closest('.jp-OutputArea-output') || gd.closest('.jp-Cell') || document.body;
    const visible = holder.getBoundingClientRect();
    const problems = [];
    const axes = [];
    for (const key of Object.keys(fl).filter((k) => /^[xy]axis\d*$/.test(k))) {
      const ax = fl[key];
      if (!ax || !ax._id) continue;
      const rec = checkAxis(gd, ax);
      if (rec) {
        axes.push(rec);
        if (rec.problem) problems.push(rec.problem);
        if (rec.tickProblem) problems.push(rec.tickProblem);
      }
      if (ax._id[0] === 'x' && typeof ax._offset === 'number') {
        const right = box.left + ax._offset + ax._length;
        if (right > visible.right + 1) {
          problems.push(`the subplot of ${ax._name} ends at x=${Math.round(right)} px, past the ` +
                        `${Math.round(visible.width)} px it is shown in (figure width ${Math.round(fl.width)} px)`);
        }
      }
    }
    const title = (fl.title && fl.title.text) || '';
    figures.push({ index, title, width: fl.width, shownWidth: Math.round(visible.width), axes, problems });
  });
  return figures;
}
