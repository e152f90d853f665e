"""Decode the same photos with the Pillow and the OpenCV JPEG encoders (grey and colour, qualities 10-40) and print
the PSNR between the two decoded JPEGs (inf: identical), the difference of their PSNR to the clean image and the
largest pixel difference. Needs opencv-python-headless besides visattn[data]."""
import torch
from visattn.tasks.restoration.data import builtin_photos
from visattn.tasks.restoration.jpeg import jpeg_roundtrip
from visattn.tasks.restoration.metrics import psnr
names = ("chelsea", "rocket", "camera", "astronaut", "coffee")
for chans in (3, 1):
    for q in (10, 20, 30, 40):
        vals, same = [], 0
        for n, x in builtin_photos(names, chans):
            x = x.float()[None] / 255
            a, b = jpeg_roundtrip(x, q, "pillow"), jpeg_roundtrip(x, q, "opencv")
            vals.append(float(psnr(a, b, y_channel=False)[0]))
            same += int(torch.equal(a, b))
            fa = float(psnr(a, x, y_channel=False)[0]); fb = float(psnr(b, x, y_channel=False)[0])
            vals[-1] = (vals[-1], fa - fb, float((a - b).abs().max() * 255))
        print(chans, q, "identical", same, "/", len(vals), [tuple(round(v, 3) for v in t) for t in vals])
