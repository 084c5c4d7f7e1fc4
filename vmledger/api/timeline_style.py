"""The timeline page's style sheet: legible from a phone's width (600 px) up; the chart
keeps its scale and scrolls in its own box, the requests table turns into labelled cards
on narrow screens."""

from __future__ import annotations

CSS = """
:root { color-scheme: light; }
body { margin: 16px 20px; font: 13px/1.4 "DejaVu Sans", "Liberation Sans", Arial,
       sans-serif; color: #0f172a; background: #fff; }
h1 { font-size: 20px; margin: 0 0 4px; }
h2 { font-size: 15px; margin: 18px 0 6px; }
.badge { display: inline-block; padding: 1px 8px; border-radius: 10px; color: #fff;
         font-size: 13px; vertical-align: 3px; }
.meta { color: #475569; margin: 2px 0; }
.why { margin: 6px 0 10px; padding: 6px 10px; background: #f1f5f9;
       border-left: 4px solid #64748b; }
.alert { color: #b91c1c; font-weight: bold; }
svg { display: block; max-width: 100%; height: auto; font-size: 12px; }
svg text { fill: #0f172a; }
svg .section { font-weight: bold; fill: #64748b; font-size: 11px;
               text-transform: uppercase; letter-spacing: .05em; }
svg .lane { font-size: 11px; fill: #334155; }
svg .time { font-size: 11px; fill: #334155; }
svg .gaplabel { font-size: 11px; fill: #7c3aed; font-style: italic; }
svg .gap { stroke: #c4b5fd; stroke-dasharray: 3 3; }
svg .tick { stroke: #e2e8f0; }
svg .rule { stroke: #e2e8f0; }
svg .track { fill: #f8fafc; }
svg .band { stroke: #fff; stroke-width: 1; }
svg .action.failed text { fill: #b91c1c; font-weight: bold; }
svg .failure circle { fill: #dc2626; stroke: #fff; stroke-width: 2; }
svg .failure text { fill: #fff; font-weight: bold; font-size: 12px; }
svg .call rect { fill: #0f766e; }
svg .call line { stroke: #99f6e4; }
svg .call.failed line { stroke: #fca5a5; }
svg .call text { fill: #115e59; font-size: 11px; }
svg .call.failed rect { fill: #dc2626; }
svg .call.failed text { fill: #b91c1c; font-weight: bold; }
.legend { margin: 4px 0 0 112px; color: #475569; font-size: 12px; }
.legend span { display: inline-block; width: 10px; height: 10px; margin: 0 4px 0 12px;
               border-radius: 2px; vertical-align: -1px; }
table { border-collapse: collapse; width: 100%; }
th, td { text-align: left; vertical-align: top; padding: 4px 8px;
         border-bottom: 1px solid #e2e8f0; }
th { background: #f8fafc; font-weight: 600; color: #334155; }
tr.failed td { background: #fef2f2; }
tr.failed td:first-child { box-shadow: inset 4px 0 0 #dc2626; }
td.result.failed, li.failed { color: #b91c1c; font-weight: bold; }
td ul { margin: 0; padding-left: 16px; }
td:nth-child(1), td:nth-child(3), td:nth-child(4), td.mono { white-space: nowrap; }
code, .mono { font-family: "DejaVu Sans Mono", monospace; font-size: 12px; }
details pre { white-space: pre-wrap; font-size: 12px; background: #f8fafc; padding: 8px; }
footer { margin-top: 14px; color: #64748b; font-size: 12px; }
h1, .meta, .why, footer, td, pre { overflow-wrap: anywhere; }
/* the chart keeps its size (its labels stay legible) and scrolls sideways in its box
   when the window is narrower */
.chart-scroll { overflow-x: auto; }
@media (max-width: 1199px) { .chart-scroll svg { max-width: none; } }
/* narrow windows: each request a card of labelled lines instead of a wide table */
@media (max-width: 760px) {
  body { margin: 12px; }
  .legend { margin-left: 0; }
  .legend span:first-child { margin-left: 0; }
  table, tbody, tr, td { display: block; width: auto; }
  thead { display: none; }
  tr { border: 1px solid #e2e8f0; border-radius: 4px; margin: 0 0 8px; padding: 4px 0; }
  td { border: 0; padding: 2px 8px; white-space: normal !important; }
  td::before { content: attr(data-label); display: inline-block; min-width: 9em;
               color: #64748b; font-size: 12px; }
  td ul { display: inline-block; vertical-align: top; padding-left: 0;
          list-style-position: inside; }
}
"""
