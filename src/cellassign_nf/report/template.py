"""The page's template and style sheet (jinja2, filled by ``html.render_html``)."""


_CSS = """
body { font-family: Arial, "Liberation Sans", Helvetica, "DejaVu Sans", sans-serif; margin: 0;
       color: #222; background: #fafafa; line-height: 1.45; }
header { background: #1f3b57; color: white; padding: 18px 32px; }
header h1 { margin: 0; font-size: 24px; }
header p { margin: 4px 0 0; opacity: 0.85; font-size: 14px; }
nav { background: #e8eef4; padding: 8px 32px; font-size: 14px; position: sticky; top: 0; z-index: 1; }
nav a { margin-right: 14px; color: #1f3b57; text-decoration: none; }
main { padding: 12px 32px 40px; max-width: 1400px; }
section { background: white; border: 1px solid #ddd; border-radius: 6px; padding: 6px 20px 16px; margin: 16px 0; }
h2 { font-size: 19px; border-bottom: 1px solid #eee; padding-bottom: 4px; color: #1f3b57; }
.cards { display: flex; flex-wrap: wrap; gap: 12px; margin: 16px 0; }
.card { background: white; border: 1px solid #ddd; border-radius: 6px; padding: 10px 16px; min-width: 150px; }
.card .v { font-size: 22px; font-weight: 600; } .card .k { font-size: 12px; color: #666; }
figure { margin: 8px 0; } figure img { max-width: 100%; height: auto; border: 1px solid #f0f0f0; }
figcaption { font-size: 13px; color: #555; max-width: 900px; }
table { border-collapse: collapse; font-size: 13px; margin: 8px 0; }
th, td { border: 1px solid #ddd; padding: 3px 10px; text-align: left; }
th { background: #f3f5f7; } td.n { text-align: right; font-variant-numeric: tabular-nums; }
.note { background: #fff8e1; border-left: 4px solid #f0b400; padding: 6px 12px; font-size: 14px; }
.note.warn { background: #fdecea; border-left-color: #c62828; font-weight: 600; }
.cols { display: flex; flex-wrap: wrap; gap: 28px; align-items: flex-start; }
footer { font-size: 12px; color: #777; padding: 0 32px 24px; }
"""


_TEMPLATE = """<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>CellAssign report: {{ sample }}</title>
<style>{{ css|safe }}</style>
</head>
<body>
<header>
  <h1>CellAssign report: {{ sample }}</h1>
  <p>cellassign-nf {{ versions.get("cellassign-nf", "") }} &middot; generated {{ generated }}</p>
</header>
<nav>{% for s in sections %}<a href="#{{ s.id }}">{{ s.title }}</a>{% endfor %}</nav>
<main>
<div class="cards">
{% for c in cards %}  <div class="card"><div class="v">{{ c[1] }}</div><div class="k">{{ c[0] }}</div></div>
{% endfor %}</div>
{% for s in sections %}
<section id="{{ s.id }}">
<h2>{{ s.title }}</h2>
{% if s.intro %}<p>{{ s.intro }}</p>{% endif %}
{% for w in s.warnings %}<p class="note warn">Warning: {{ w }}</p>{% endfor %}
{% for n in s.notes %}<p class="note">{{ n }}</p>{% endfor %}
<div class="cols">
{% for t in s.tables %}<div>
{% if t.title %}<h3 style="font-size:15px;margin:8px 0 2px">{{ t.title }}</h3>{% endif %}
<table>
<thead><tr>{% for h in t.header %}<th>{{ h }}</th>{% endfor %}</tr></thead>
<tbody>{% for row in t.rows %}<tr>{% for cell in row %}<td{% if cell[1] %} class="n"{% endif %}>{{ cell[0] }}</td>{% endfor %}</tr>
{% endfor %}</tbody>
</table></div>
{% endfor %}</div>
{% for f in s.figures %}<figure id="fig-{{ f.key }}">
<img src="{{ f.data_uri }}" alt="{{ f.title }}">
<figcaption>{{ f.caption }} <em>(also written as {{ f.path.name }})</em></figcaption>
</figure>
{% endfor %}
</section>
{% endfor %}
</main>
<footer>Self-contained page: figures are embedded; no network access is needed to view it.</footer>
</body>
</html>
"""
