"""The tool's plumbing: what a recipe or a layout never needs to read to be changed.

    weights      Meta's checkpoints, safe loading, which model a file holds, device and precision
    cli          flag spelling, bounded numbers, the data flags, the model a checkpoint holds,
                 the image settings a checkpoint was trained with
    files        reading files with messages that name them; one atomic write
    masks        mask IoU, one random pixel inside each mask
    images       images and label PNGs read, resized and checked (size, cut-off files)
    demo         the synthetic demo datasets (images, videos)
    checkpoints  the run folder's lock, the --resume rules, what model.pt holds, atomic saves
    stopping     SIGINT / SIGTERM: save the step, then Stopped with its message
    ddp          torchrun set-up, values all ranks agree on, means over ranks
    cache        the frozen encoder's cached image features; the one free-memory probe
    video        the video machinery: memory check, clip cache, clip sampling, J&F
    runlog       log.csv and curves.png
    labelmaps    instance label maps: masks stitched best first, scored, coloured, written
    jobs         infer.py's images with their masks and ground truth, read ahead; --out checked

Nothing here imports a root script but model.py (tests/test_imports.py checks it).
"""
