"""Prediction on image files: the pipeline (images, config, strictly loaded model, batched
inference, COCO records), its command line (`tools/predict.py`), drawing ranked detections,
and `MSRCNNPredictor` for one image at a time. Submodules are imported on use."""
