"""The shortest training schedule that still runs every step (mining, all three stages); shared by tests."""

TINY_TRAINING_OVERRIDES = [
    "training.cpu.screening.epochs=3", "training.cpu.screening.samples_per_epoch=32",
    "training.cpu.screening.batch_size=16", "training.cpu.screening.val_samples=16",
    "training.cpu.screening.mining_epochs=[1]", "training.cpu.screening.mining_cases=2",
    "training.cpu.discrimination.epochs=1", "training.cpu.discrimination.samples_per_epoch=32",
    "training.cpu.discrimination.batch_size=16", "training.cpu.discrimination.val_samples=16",
    "segmentation.patch_size=[16,16,16]",
    "training.cpu.segmentation.epochs=1", "training.cpu.segmentation.samples_per_epoch=16",
    "training.cpu.segmentation.batch_size=8", "training.cpu.segmentation.val_samples=8",
]

#: A schedule that is short but still learns (tiny preset, 12 screening and 15 discrimination epochs of 512
#: samples, about a minute on 2 cores for 12 small cases); NMS only within +-2 voxels, so neighbouring CMBs of a
#: cluster stay separate candidates. Shared by the learning tests.
LEARNING_OVERRIDES = [
    "training.cpu.screening.epochs=12", "training.cpu.screening.samples_per_epoch=512",
    "training.cpu.screening.batch_size=32", "training.cpu.screening.mining_epochs=[4,8]",
    "training.cpu.screening.val_samples=64",
    "training.cpu.discrimination.epochs=15", "training.cpu.discrimination.samples_per_epoch=512",
    "training.cpu.discrimination.batch_size=32", "training.cpu.discrimination.val_samples=64",
    "training.cpu.discrimination.lr=0.003",
    "inference.nms_size_vox=[5,5,5]",
]
