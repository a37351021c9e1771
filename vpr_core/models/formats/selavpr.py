"""`selavpr`: SelaVPR (Lu-Feng/SelaVPR `SelaVPR_msls.pth`, `SelaVPR_pitts30k.pth`) fine-tuned checkpoint
-> dinov2_adapter backbone + GeM aggregator + upconv local head, as one key map."""
from __future__ import annotations

from vpr_core.models.formats.dinov2_pretrain import dinov2_registers, dinov2_rules, mask_token
from vpr_core.models.formats.keymap import BACKBONE_MODEL as BB
from vpr_core.models.formats.keymap import Drop, KeyMap, Rename, module_prefixed, register

# Layout read from the published training code (network.GeoLocalizationNet wrapped in DataParallel,
# saved as {"model_state_dict": ..., "epoch_num", "optimizer_state_dict", "best_r5", "not_improved_num"}):
#   module.backbone.<DINOv2 ViT-L/14 names, block_chunks=0>     (incl. mask_token, unused)
#   module.backbone.blocks.N.adapter{1,2}.D_fc{1,2}.{weight,bias}   (adapters, hidden = 0.5 * dim)
#   module.aggregation.1.p    (1,)  GeM exponent (aggregation = L2Norm, GeM, Flatten)
#   module.LocalAdapt.upconv{1,2}.{weight,bias}   (ConvTranspose2d 1024->256->128, the local head)
# The released .pth files themselves could not be opened here (no downloads): the names come from the
# code, not from the files; a mismatch is reported key by key on load.
_pre, _post = dinov2_registers("backbone.")
SELAVPR = register(KeyMap(
    name="selavpr",
    doc="SelaVPR fine-tuned checkpoint -> dinov2_adapter backbone + GeM aggregator (aggregator.p) + local head "
        "(local_head.upconv1/upconv2). Covers the whole model; the local head is skipped when the model has none.",
    rules=(
        Rename("backbone.blocks.{i:int}.adapter{n:int}.D_fc{j:int}.{p}", BB + "blocks.{i}.adapter{n}.fc{j}.{p}"),
        *dinov2_rules("backbone.", BB),
        Rename("aggregation.1.p", "aggregator.p", seed_shape=(1,)),
        Rename("LocalAdapt.{rest:path}", "local_head.{rest}"),
    ),
    drops=(Drop("backbone.mask_token", "DINOv2 iBOT mask token, training only",
                mask_token(BB, "backbone.mask_token")),),
    optional=("local_head.",),
    pre_ours=_pre, post_seed=_post,
    container=module_prefixed("model_state_dict", epoch_num=1, best_r5=0.0, not_improved_num=0),
))
