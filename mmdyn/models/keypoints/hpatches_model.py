"""An mmengine model that turns HPatches sequences into features, so that
``HPatchesDataset`` + ``HPatchesMMAMetric`` run in the usual test loop."""
import numpy as np
from mmengine.model import BaseModel
from mmengine.registry import MODELS


@MODELS.register_module()
class HPatchesFeatureModel(BaseModel):
    """``features``: an extractor config (``D2NetFeatures``, ``SiftFeatures``). Each
    test item (one sequence) comes back with the features of its six images."""

    def __init__(self, features=dict(type='SiftFeatures'), init_cfg=None):
        super().__init__(init_cfg=init_cfg)
        self.extractor = MODELS.build(features) if isinstance(features, dict) else features

    @staticmethod
    def _items(data):
        if isinstance(data, dict):  # pseudo_collate: a dict of lists
            keys = list(data)
            return [dict(zip(keys, values)) for values in zip(*(data[k] for k in keys))]
        return list(data)

    def forward(self, inputs=None, data_samples=None, mode='predict'):
        if mode != 'predict':
            raise ValueError(f'HPatchesFeatureModel only predicts (mode={mode!r})')
        from mmdyn.datasets.hpatches import load_image
        out = []
        for item in self._items(inputs):
            features = [self.extractor(load_image(p)) for p in item['image_paths']]
            out.append(dict(sequence=item['sequence'], kind=item['kind'],
                            homographies=np.asarray(item['homographies']), features=features))
        return out

    def test_step(self, data):
        return self.forward(data, mode='predict')

    val_step = test_step
