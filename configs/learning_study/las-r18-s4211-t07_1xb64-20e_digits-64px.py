# As las-r18-s4211-t05_1xb64-20e_digits-64px.py with FLOPs target t = 0.7.
_base_ = ['./las-r18-s4211-t05_1xb64-20e_digits-64px.py']
model = dict(sparsity_loss=dict(target=0.7))
