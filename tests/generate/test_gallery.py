"""`uniform gallery` and `generate --gallery`: the page's content, its escaping, its mel images, and (in headless
chromium, from file://) that every video, sound and image on it loads and plays."""

from __future__ import annotations

import json
import re
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from tests.fixtures.browser import chromium_driver, media_report
from uniform_cli.cli.main import app
from uniform_cli.generate.gallery import MAGMA, colorize
from uniform_cli.media.mel import mel_picture

CAPTION = 'a dog <script>alert("x")</script> & "barks" <img src=x onerror=alert(1)>'


class Links(HTMLParser):
    """Every tag and `src`/`href` of a page, as a browser's parser reads them."""

    def __init__(self) -> None:
        super().__init__()
        self.tags: list[str] = []
        self.links: list[str] = []

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)
        self.links += [value for key, value in attrs if key in ("src", "href") and value]


@pytest.fixture(scope="module")
def outputs(tmp_path_factory, light_checkpoint, media) -> Path:
    """`uniform generate --gallery` over t2av (a hostile caption), v2a, a2v and i2av rows."""
    csv_dir = media["video"].parent.parent
    Image.fromarray(np.full((40, 60, 3), (200, 30, 90), np.uint8)).save(csv_dir / "media" / "still.jpg")
    prompts = csv_dir / "gallery.csv"
    caption = CAPTION.replace('"', '""')
    prompts.write_text("id,text,task,video,audio,image,seconds,seed\n"
                       f'dog,"{caption}",t2av,,,,,3\n'
                       "scene,,v2a,media/scene.mp4,,,,\n"
                       "drums,a drum solo,a2v,,media/drums.wav,,,\n"
                       "kite,a kite,i2av,,,media/still.jpg,2,\n")
    out = tmp_path_factory.mktemp("gallery") / "out"
    result = CliRunner().invoke(app, ["generate", str(prompts), "--checkpoint", str(light_checkpoint), "--out",
                                      str(out), "--device", "cpu", "--gallery"])
    assert result.exit_code == 0, result.output
    assert "gallery: 4 clip(s)" in result.output
    return out


def test_page_shows_every_clip_with_its_facts_escaped_and_relative_links(outputs):
    page = (outputs / "index.html").read_text()
    parser = Links()
    parser.feed(page)
    assert "script" not in parser.tags  # the caption's <script> and <img onerror> stayed text
    assert "onerror" not in page.replace("onerror=alert", "")  # no attribute of that name, only the text
    assert "a dog &lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt; &amp; &quot;barks&quot;" in page
    for name in ("dog", "scene", "drums", "kite"):
        assert f'<article id="{name}">' in page and f'src="{name}.mp4"' in page
        assert f'src="gallery/{name}.mel.png"' in page
    results = {json.loads(line)["id"]: json.loads(line) for line in (outputs / "results.jsonl").read_text().splitlines()}
    assert f"seed <b>{results['scene']['seed']}</b>" in page and "seed <b>3</b>" in page
    assert "task <b>v2a</b>" in page and "<th>steps</th><td>2</td>" in page
    # given inputs: the user's video and sound linked relatively, the image as a PNG copy
    assert re.search(r'<video controls preload="metadata" src="\.\./[^"]*media/scene\.mp4">', page)
    assert re.search(r'<audio controls preload="metadata" src="\.\./[^"]*media/drums\.wav">', page)
    assert 'src="gallery/kite.input.png"' in page and 'src="gallery/drums.input.mel.png"' in page
    # works from file:// anywhere: nothing absolute, no scheme, nothing fetched from elsewhere
    assert parser.links and all(not re.match(r"^([a-z]+:|/)", link) for link in parser.links)
    for link in parser.links:
        assert (outputs / link).resolve().is_file(), link


def test_mel_images_are_the_sound_and_a_rerun_keeps_them(outputs):
    mel = np.asarray(Image.open(outputs / "gallery" / "dog.mel.png"))
    assert mel.shape == (128, 400, 3)  # 4 s at 100 frames a second, 64 bands drawn twice as tall
    given = np.asarray(Image.open(outputs / "gallery" / "drums.input.mel.png"))
    assert given.shape == (128, 450, 3)  # the given 4.5 s sound
    before = (outputs / "gallery" / "dog.mel.png").stat().st_mtime_ns
    result = CliRunner().invoke(app, ["gallery", str(outputs)])
    assert result.exit_code == 0, result.output
    assert (outputs / "gallery" / "dog.mel.png").stat().st_mtime_ns == before


def test_mel_colours_run_from_quiet_to_loud_and_silence_is_dark():
    assert (colorize(mel_picture(np.zeros(16000, np.float32))) == MAGMA[0]).all()  # the quietest colour everywhere
    np.testing.assert_array_equal(colorize(np.array([0.0, 1.0])), MAGMA[[0, -1]].astype(np.uint8))


def test_gallery_of_a_folder_without_results_is_a_usage_error(tmp_path):
    result = CliRunner().invoke(app, ["gallery", str(tmp_path)])
    assert result.exit_code == 2 and "no results.jsonl" in result.output
    result = CliRunner().invoke(app, ["gallery", str(tmp_path / "nowhere")])
    assert result.exit_code == 2 and "not a folder" in result.output


def test_a_missing_clip_is_reported_and_the_page_still_written(tmp_path, outputs):
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(outputs, copy)
    (copy / "kite.mp4").unlink()
    (copy / "index.html").unlink()
    result = CliRunner().invoke(app, ["gallery", str(copy)])
    assert result.exit_code == 1 and "kite: kite.mp4 is missing" in result.output
    assert "kite.mp4 is missing" in (copy / "index.html").read_text()


def test_every_video_sound_and_image_loads_in_chromium_from_file_url(outputs):
    with chromium_driver() as driver:
        driver.get((outputs / "index.html").as_uri())
        report = media_report(driver)
    videos = [r for r in report if r["tag"] == "video"]
    assert len(videos) == 5  # four outputs and the given video
    assert len([r for r in report if r["tag"] == "audio"]) == 1
    for item in report:
        if item["tag"] == "img":
            assert item["complete"] and item["width"] > 0 and item["height"] > 0, item
            continue
        assert item["error"] is None and item["ready"] >= 2, item
        assert 0 < item["duration"] < 10 and item["time"] > 0, item  # finite, and it played
        assert item["audio_bytes"] > 0, item  # the sound decodes too
        if item["tag"] == "video":
            assert item["video_bytes"] > 0, item
    assert len([r for r in report if r["tag"] == "img"]) == 6  # four mels, the given sound's mel, the still
