/**
 * Hand-written SVG bar charts: bars for the current figures, an optional line for the previous
 * period, drawn at the container's pixel width so that text stays readable on a phone. Each bar
 * carries its figure (`data-start`, `data-value`) and a `<title>` with the words a tooltip or a
 * screen reader needs.
 */

const SVG = 'http://www.w3.org/2000/svg';

export interface Bar {
  /** ISO instant the bar starts at. */
  start: string;
  value: number;
  /** False: the figure can still grow (drawn lighter). */
  complete: boolean;
  /** The bar's text for its tooltip. */
  title: string;
}

export interface ChartData {
  bars: Bar[];
  /** The previous period's values, index for index, drawn as a line; omitted: no line. */
  previous?: number[];
  /** The x-axis label of a bar's start. */
  tick: (start: string) => string;
  /** The y-axis label of a value. */
  value: (value: number) => string;
}

const HEIGHT = 180;
const MARGIN = { top: 10, right: 8, bottom: 24, left: 44 };
/** Room an x-axis label needs, in pixels: labels closer than that are skipped. */
const TICK_SPACING = 56;

/** Draws `data` into `svg` (an `<svg>` element), replacing what was there. */
export function drawBarChart(svg: SVGSVGElement, data: ChartData): void {
  const width = Math.max(200, Math.floor(svg.parentElement?.clientWidth ?? 600));
  svg.setAttribute('width', String(width));
  svg.setAttribute('height', String(HEIGHT));
  svg.setAttribute('viewBox', `0 0 ${width} ${HEIGHT}`);
  svg.replaceChildren();

  const plotWidth = width - MARGIN.left - MARGIN.right;
  const plotHeight = HEIGHT - MARGIN.top - MARGIN.bottom;
  const count = Math.max(1, data.bars.length);
  const highest = Math.max(1, ...data.bars.map((bar) => bar.value), ...(data.previous ?? []));
  const top = niceCeiling(highest);
  const y = (value: number): number => MARGIN.top + plotHeight - (value / top) * plotHeight;
  const slot = plotWidth / count;

  // Grid lines and y labels at 0, half and the top.
  for (const value of [0, top / 2, top]) {
    const at = y(value);
    svg.append(
      element('line', { class: 'grid', x1: MARGIN.left, x2: width - MARGIN.right, y1: at, y2: at }),
    );
    const label = element('text', {
      class: 'axis',
      x: MARGIN.left - 6,
      y: at + 4,
      'text-anchor': 'end',
    });
    label.textContent = data.value(value);
    svg.append(label);
  }

  const every = Math.max(1, Math.ceil(TICK_SPACING / slot));
  data.bars.forEach((bar, index) => {
    const x = MARGIN.left + index * slot;
    const barTop = y(bar.value);
    const rect = element('rect', {
      class: bar.complete ? 'bar' : 'bar incomplete',
      x: x + Math.min(1, slot * 0.1),
      y: barTop,
      width: Math.max(1, slot - Math.min(2, slot * 0.2)),
      height: Math.max(0, MARGIN.top + plotHeight - barTop),
      'data-start': bar.start,
      'data-value': bar.value,
    });
    const title = document.createElementNS(SVG, 'title');
    title.textContent = bar.title;
    rect.append(title);
    svg.append(rect);
    // Labels counted from the newest bar, so the latest one is always labelled.
    if ((count - 1 - index) % every === 0) {
      // The newest label ends at its bar's right edge: centred, it would run off the chart.
      const last = index === count - 1;
      const label = element('text', {
        class: 'axis',
        x: last ? x + slot : x + slot / 2,
        y: HEIGHT - 6,
        'text-anchor': last ? 'end' : 'middle',
      });
      label.textContent = data.tick(bar.start);
      svg.append(label);
    }
  });

  const previous = data.previous;
  if (previous !== undefined && previous.length > 0) {
    const points = previous
      .slice(0, count)
      .map((value, index) => `${MARGIN.left + index * slot + slot / 2},${y(value)}`);
    svg.append(element('polyline', { class: 'previous', points: points.join(' ') }));
    previous.slice(0, count).forEach((value, index) => {
      svg.append(
        element('circle', {
          class: 'previous-point',
          cx: MARGIN.left + index * slot + slot / 2,
          cy: y(value),
          r: 2.5,
        }),
      );
    });
  }
}

/** 1, 2 or 5 times a power of ten, at least `value`: a y-axis top a person reads at a glance. */
export function niceCeiling(value: number): number {
  const power = 10 ** Math.floor(Math.log10(value));
  for (const step of [1, 2, 5, 10]) {
    if (step * power >= value) return step * power;
  }
  return 10 * power;
}

function element(name: string, attributes: Record<string, string | number>): SVGElement {
  const node = document.createElementNS(SVG, name);
  for (const [attribute, value] of Object.entries(attributes)) {
    node.setAttribute(attribute, String(value));
  }
  return node;
}
