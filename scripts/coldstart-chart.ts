// The cold-start table as an SVG bar chart: one panel per image, one bar per mode, seconds to the
// workload's result, each panel on its own scale (the images differ by orders of magnitude).

export interface ChartBar {
  mode: string;
  seconds: number;
  /** Printed after the seconds, e.g. the ratio to the floor and the bytes fetched. */
  note: string;
}

export interface ChartPanel {
  title: string;
  /** Smaller lines under the title: what the image holds, the workload. */
  lines: readonly string[];
  bars: readonly ChartBar[];
  /** Lines printed under the bars: modes that could not be measured, and why. */
  notes?: readonly string[];
}

const COLORS: Record<string, string> = {
  traditional: '#9e9e9e',
  lazy: '#1f77b4',
  'lazy+prefetch10': '#6baed6',
  'lazy+trace': '#2ca02c',
  'lazy+cached': '#98df8a',
  floor: '#444444',
};

const WIDTH = 900;
const LABEL_W = 130;
const BAR_MAX = 430;
const BAR_H = 22;
const GAP = 8;
const FONT = 'font-family="DejaVu Sans, Helvetica, Arial, sans-serif"';

function esc(s: string): string {
  return s.replace(/&/g, '&amp;').replace(/</g, '&lt;').replace(/>/g, '&gt;');
}

export function coldStartSvg(heading: string, subheading: string, panels: readonly ChartPanel[]): string {
  const out: string[] = [];
  let y = 30;
  out.push(`<text x="12" y="${y}" font-size="17" font-weight="bold">${esc(heading)}</text>`);
  y += 20;
  out.push(`<text x="12" y="${y}" font-size="12" fill="#555">${esc(subheading)}</text>`);
  y += 18;
  for (const panel of panels) {
    y += 22;
    out.push(`<text x="12" y="${y}" font-size="14" font-weight="bold">${esc(panel.title)}</text>`);
    for (const line of panel.lines) {
      y += 16;
      out.push(`<text x="12" y="${y}" font-size="12" fill="#555">${esc(line)}</text>`);
    }
    y += 8;
    const max = Math.max(...panel.bars.map((b) => b.seconds), 1e-9);
    for (const bar of panel.bars) {
      const w = Math.max(1, (bar.seconds / max) * BAR_MAX);
      const mid = y + BAR_H / 2 + 4;
      const fill = COLORS[bar.mode] ?? '#8c564b';
      out.push(`<text x="${LABEL_W - 8}" y="${mid}" font-size="12" text-anchor="end">${esc(bar.mode)}</text>`);
      out.push(`<rect x="${LABEL_W}" y="${y}" width="${w.toFixed(1)}" height="${BAR_H}" fill="${fill}"/>`);
      out.push(
        `<text x="${(LABEL_W + w + 6).toFixed(1)}" y="${mid}" font-size="12">` +
          `<tspan font-weight="bold">${bar.seconds.toFixed(2)} s</tspan> ${esc(bar.note)}</text>`,
      );
      y += BAR_H + GAP;
    }
    for (const note of panel.notes ?? []) {
      y += 4;
      out.push(`<text x="${LABEL_W}" y="${y + 8}" font-size="12" fill="#555">${esc(note)}</text>`);
      y += 14;
    }
  }
  y += 12;
  return [
    `<svg xmlns="http://www.w3.org/2000/svg" width="${WIDTH}" height="${y}" viewBox="0 0 ${WIDTH} ${y}" ${FONT}>`,
    `<rect width="${WIDTH}" height="${y}" fill="#ffffff"/>`,
    ...out,
    '</svg>',
    '',
  ].join('\n');
}
