"""Sample files of every supported format, made here (no fixtures on disk)."""

from __future__ import annotations

import io
import zipfile
from pathlib import Path

NANUM = Path("/usr/share/fonts/truetype/nanum/NanumGothic.ttf")
DEJAVU = Path("/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf")


def docx_bytes(*, title: str = "Quarterly Report") -> bytes:
    import docx

    document = docx.Document()
    document.core_properties.title = title
    document.add_paragraph("Prepared by the finance team.")
    document.add_heading("Revenue", level=1)
    document.add_paragraph("Revenue grew by twelve percent. Most of it came from the new region.")
    table = document.add_table(rows=3, cols=3)
    for r, row in enumerate([("Region", "Q1", "Q2"), ("North", "10", "12"), ("South", "7", "9")]):
        for c, value in enumerate(row):
            table.cell(r, c).text = value
    document.add_heading("Costs", level=2)
    document.add_paragraph("비용은 작년과 비슷했습니다. 인건비가 가장 큰 항목입니다.")
    buffer = io.BytesIO()
    document.save(buffer)
    return buffer.getvalue()


def pptx_bytes() -> bytes:
    import pptx
    from pptx.util import Inches

    presentation = pptx.Presentation()
    presentation.core_properties.title = ""
    first = presentation.slides.add_slide(presentation.slide_layouts[1])
    assert first.shapes.title is not None
    first.shapes.title.text = "Launch plan"
    first.placeholders[1].text = "Ship the beta in March.\nCollect feedback from ten customers."
    first.notes_slide.notes_text_frame.text = "Speaker note: mention the budget."
    second = presentation.slides.add_slide(presentation.slide_layouts[5])
    assert second.shapes.title is not None
    second.shapes.title.text = "Milestones"
    shape = second.shapes.add_table(3, 2, Inches(1), Inches(2), Inches(6), Inches(2))
    for r, row in enumerate([("Milestone", "Date"), ("Beta", "March"), ("GA", "June")]):
        for c, value in enumerate(row):
            shape.table.cell(r, c).text = value
    buffer = io.BytesIO()
    presentation.save(buffer)
    return buffer.getvalue()


HTML_PAGE = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>Solar panels explained</title>
<script>var tracking = "do-not-index-this-script";</script><style>body{color:red}</style></head>
<body>
<nav><ul><li><a href="/">Home</a></li><li><a href="/shop">Shop cookie-banner-menu</a></li></ul></nav>
<header><div class="banner">Subscribe to our newsletter-banner today</div></header>
<main><article>
<h1>Solar panels explained</h1>
<p>Solar panels turn sunlight into electricity with photovoltaic cells. A typical home system produces
between four and eight kilowatts at its peak, depending on the roof and the weather.</p>
<h2>Efficiency</h2>
<p>Modern monocrystalline panels reach an efficiency of about twenty-two percent. Dust, heat and shade
reduce that figure, so installers angle the panels and leave room for air to flow beneath them.</p>
<h2>Costs</h2>
<p>Prices fell by more than eighty percent over the last decade. Most households recover the cost of a
system within eight to twelve years through lower electricity bills.</p>
</article></main>
<aside>Related: buy our sidebar-advert gadgets</aside>
<footer><p>Copyright 2024 footer-legal-text. All rights reserved.</p></footer>
</body></html>
"""


def csv_bytes(encoding: str = "utf-8", delimiter: str = ",") -> bytes:
    rows = [
        ("이름", "도시", "나이"),
        ("김민수", "서울", "34"),
        ("Jane Doe", "Busan", "29"),
        ("박지영", "대구", "41"),
    ]
    return "\r\n".join(delimiter.join(row) for row in rows).encode(encoding)


def scanned_pdf(lines: list[str], *, font: Path = NANUM) -> bytes:
    """A PDF whose only page is a picture of ``lines`` (no text layer), as a scanner makes."""
    from PIL import Image, ImageDraw, ImageFont

    image = Image.new("L", (1654, 1169), 255)  # A5 landscape at 200 DPI
    draw = ImageDraw.Draw(image)
    typeface = ImageFont.truetype(str(font), 44)
    for number, line in enumerate(lines):
        draw.text((100, 120 + number * 90), line, font=typeface, fill=0)
    buffer = io.BytesIO()
    image.save(buffer, format="PDF", resolution=200)
    return buffer.getvalue()


def zip_bytes(members: dict[str, bytes], *, content_types: bytes | None = None) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=9) as archive:
        if content_types is not None:
            archive.writestr("[Content_Types].xml", content_types)
        for name, data in members.items():
            archive.writestr(name, data)
    return buffer.getvalue()


WORD_CONTENT_TYPES = (
    b'<?xml version="1.0"?><Types xmlns="http://schemas.openxmlformats.org/package/2006/content-types">'
    b'<Override PartName="/word/document.xml" ContentType="application/'
    b'vnd.openxmlformats-officedocument.wordprocessingml.document.main+xml"/></Types>'
)
