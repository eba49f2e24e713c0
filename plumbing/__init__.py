"""The tool's plumbing: what a recipe or a layout never needs to read to be changed.

    cli          flag spelling, bounded numbers, the data flags, the model a checkpoint holds,
                 the image settings a checkpoint was trained with
    files        reading files with messages that name them; one atomic write
    masks        mask IoU, one random pixel inside each mask
    images       images and label PNGs read, resized and checked (size, cut-off files)
    demo         the synthetic demo datasets (images, videos)

Nothing here imports a root script but model.py (tests/test_imports.py checks it).
"""
