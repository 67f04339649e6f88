"""CPU seconds per image of the CPU stages, on one core: what sizing a CPU worker group needs.

    python -m bench.cpu_stages [--image-size 384] [--repeats 200]

* download side, per image, without the network: our guarded fetch's check of the body
  (`pipeline.download._inspect`: header, a JPEG decoded at 1/8 scale) and img2dataset's resizer
  (cv2 decode, resize to image-size with borders, JPEG encode at quality 95), as each download
  process does after the bytes arrived;
* the graph's decode stage (`pipeline.decode.Decode`: decode the shard's JPEG, fingerprints
  (sha256 + dhash), resize, to uint8), per image.

The web image is a real photo (matplotlib's grace_hopper.jpg, 512x600) and the same upscaled 2x
(1024x1200, re-encoded at quality 90). Timed by `time.process_time` (this process's CPU time, so
other work on the machine disturbs it less than the wall clock), torch and cv2 at one thread.
Left out: HTTP and TLS, DNS, the tar and Parquet writes, Ray's own per-block costs. Figures,
not pass/fail.
"""
from __future__ import annotations

import os

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
os.environ.setdefault("OMP_NUM_THREADS", "1")

import argparse
import io
import logging
import time

from PIL import Image

log = logging.getLogger(__name__)


def _jpeg(image: Image.Image, quality: int) -> bytes:
    buf = io.BytesIO()
    image.save(buf, "JPEG", quality=quality)
    return buf.getvalue()


def _cpu_per_call(fn, repeats: int) -> float:
    fn()  # warm-up
    t0 = time.process_time()
    for _ in range(repeats):
        fn()
    return (time.process_time() - t0) / repeats


def main(argv: list[str] | None = None) -> int:
    import cv2
    import matplotlib.cbook
    from img2dataset.resizer import Resizer

    from bench.common import machine
    from pipeline.decode import MAX_PIXELS, Decode
    from pipeline.download import _inspect

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--image-size", type=int, default=384)
    p.add_argument("--repeats", type=int, default=200)
    args = p.parse_args(argv)
    cv2.setNumThreads(1)
    photo = Image.open(matplotlib.cbook.get_sample_data("grace_hopper.jpg")).convert("RGB")
    webs = {f"{photo.width}x{photo.height}": _jpeg(photo, 90),
            f"{photo.width * 2}x{photo.height * 2}": _jpeg(photo.resize((photo.width * 2, photo.height * 2),
                                                                        Image.BICUBIC), 90)}
    resizer = Resizer(image_size=args.image_size, resize_mode="border", resize_only_if_bigger=False, encode_quality=95)
    decode = Decode(args.image_size)
    print(machine())
    for name, body in webs.items():
        inspect_s = _cpu_per_call(lambda: _inspect(body, MAX_PIXELS), args.repeats)
        resize_s = _cpu_per_call(lambda: resizer(io.BytesIO(body)), args.repeats)
        shard_jpeg, *_, error = resizer(io.BytesIO(body))
        assert error is None, error
        decode_s = _cpu_per_call(lambda: decode._one(shard_jpeg), args.repeats)
        download_s = inspect_s + resize_s
        print(f"web image {name} ({len(body) // 1024} KiB) -> {args.image_size} px ({len(shard_jpeg) // 1024} KiB):\n"
              f"  download side: inspect {inspect_s * 1e3:6.2f} ms + img2dataset resize/encode {resize_s * 1e3:6.2f} ms "
              f"= {download_s * 1e3:6.2f} CPU ms/image ({1 / download_s:6.0f} images/s per core)\n"
              f"  graph decode:  {decode_s * 1e3:6.2f} CPU ms/image ({1 / decode_s:6.0f} images/s per core)\n"
              f"  both:          {(download_s + decode_s) * 1e3:6.2f} CPU ms/image "
              f"({1 / (download_s + decode_s):6.0f} images/s per core)", flush=True)
    return 0


if __name__ == "__main__":
    logging.basicConfig(level=logging.WARNING)
    raise SystemExit(main())
