# As sar-r18-g2s2a2b1-t05_1xb64-20e_digits-64px.py with refinement-rate target t = 0.3.
_base_ = ['./sar-r18-g2s2a2b1-t05_1xb64-20e_digits-64px.py']
model = dict(sparsity_loss=dict(target=0.3))
